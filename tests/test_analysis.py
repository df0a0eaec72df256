"""Soft-thinking diagnostics: divergences and ROUGE-L against hand-computed values, the logit lens, and
`latentcot analyze` end to end on tiny-llama."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latentcot.analysis.divergence import js_divergence, kl_divergence
from latentcot.analysis.lens import final_norm, logit_lens
from latentcot.analysis.similarity import lcs_length, rouge_l


def test_kl_and_js_hand_values():
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.0, 0.5, 0.5])
    assert float(kl_divergence(p, p)) == 0.0
    # m = (0.25, 0.5, 0.25): KL(p || m) = 0.5 ln 2 + 0.5 ln 1 = 0.5 ln 2, same for q, so JS = 0.5 ln 2.
    assert float(js_divergence(p, q)) == pytest.approx(0.5 * math.log(2))
    # Disjoint supports reach the maximum ln 2.
    assert float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(math.log(2))
    # A hand example: p = (0.9, 0.1), q = (0.5, 0.5), m = (0.7, 0.3).
    kl_pm = 0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3)
    kl_qm = 0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)
    got = js_divergence(torch.tensor([0.9, 0.1], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert float(got) == pytest.approx(0.5 * (kl_pm + kl_qm), rel=1e-9)
    batch = js_divergence(torch.tensor([[0.9, 0.1], [1.0, 0.0]]), torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    assert batch.shape == (2,) and float(batch[1]) == 0.0


def test_rouge_l_hand_values():
    assert lcs_length([1, 2, 3, 4], [1, 3, 4, 5]) == 3
    assert lcs_length([], [1]) == 0
    # LCS 3, P = 3/4, R = 3/5, F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3.
    assert rouge_l([1, 2, 3, 4], [1, 3, 9, 4, 5]) == pytest.approx(2 / 3)
    assert rouge_l([7, 8], [7, 8]) == 1.0
    assert rouge_l([1], [2]) == 0.0 and rouge_l([], [1, 2]) == 0.0
    # Order matters: a reversed sequence shares only a length-1 subsequence.
    assert rouge_l([1, 2, 3], [3, 2, 1]) == pytest.approx(1 / 3)


def test_logit_lens_last_layer_is_the_model_output(tiny):
    assert final_norm(tiny.model) is not None
    ids = torch.tensor([tiny.encode("hello there")])
    lens = logit_lens(tiny.model, tiny.embed(ids), torch.arange(ids.shape[1]))
    layers = tiny.model.config.num_hidden_layers
    assert len(lens["prob"]) == layers + 1 and len(lens["prob"][0]) == ids.shape[1]
    assert all(v == 1.0 for v in lens["agree"][-1])  # the output layer's top-1 is the target by definition
    # Layer L-1 read through norm + head by hand.
    out = tiny.model(input_ids=ids, output_hidden_states=True)
    h = out.hidden_states[layers - 1][0]
    by_hand = torch.softmax(tiny.model.get_output_embeddings()(final_norm(tiny.model)(h)), -1)
    target = out.logits[0].argmax(-1)
    torch.testing.assert_close(torch.tensor(lens["prob"][layers - 1]), by_hand.gather(-1, target[:, None])[:, 0])


def test_analyze_writes_json_and_plots(tmp_path, shared_data):
    from latentcot.cli.main import main

    out = tmp_path / "an"
    argv = ["analyze", "--model", "tiny-llama", "--task", "gsm8k", "--limit", "2", "--steps", "4", "--out", str(out)]
    rc = main(argv + ["--data-dir", str(shared_data), "--no-progress", "--no-eos-stop", "soft_top_k=5"])
    assert rc == 0
    report = json.loads((out / "analysis.json").read_text())
    s = report["summary"]
    assert s["questions"] == 2 and len(report["questions"]) == 2
    q = report["questions"][0]
    assert len(q["soft_top1"]) == 4 and len(q["js_soft_top1"]) == 4 and len(q["entropy"]) == 4
    assert all(0 <= v <= math.log(2) + 1e-9 for v in q["js_soft_top1"] + q["js_soft_top2"])
    assert 0 <= q["rouge_l"] <= 1
    assert len(s["lens_prob_mean"]) == 3 and len(s["lens_prob_mean"][0]) == 4  # 2 layers + embeddings, 4 steps
    assert report["method_settings"]["soft_top_k"] == 5
    for name in ("entropy.png", "js.png", "logit_lens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soft_top1_trace_has_zero_js_to_its_top1(tiny):
    """With one mixed token the soft input is its top-1 token: JS(soft, top-1) is exactly 0, ROUGE-L to greedy 1."""
    from latentcot.analysis.soft_trace import diagnose
    from latentcot.decoding.sampling import RowRandom
    from latentcot.methods import build_method

    method = build_method("soft_thinking", {"soft_top_k": 1}, tiny)
    d = diagnose(method, tiny.encode(tiny.chat_prompt("What is 2+3?")), 4, RowRandom([0]), stop_at_eos=False)
    assert d["js_soft_top1"] == pytest.approx([0.0] * 4, abs=1e-9)
    assert d["soft_top1"] == d["hard_ids"] and d["rouge_l"] == 1.0
    torch.testing.assert_close(torch.tensor(d["entropy"]), torch.tensor(d["hard_entropy"]), atol=1e-4, rtol=1e-4)


def test_analyze_help_is_instant():
    from latentcot.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["analyze", "--help"])
    assert e.value.code == 0


def test_png_figure_saves_once_and_closes_even_on_error(tmp_path):
    """The shared figure helper (used by analysis/plots.py and analysis/rl.py): a PNG on success, none on an error
    inside the block, and no figure left open either way."""
    import matplotlib.pyplot as plt

    from latentcot.analysis.plots import png_figure

    open_before = len(plt.get_fignums())
    with png_figure(tmp_path / "a.png", (4, 3), ncols=2, suptitle="t") as (fig, axes):
        assert len(axes) == 2
        axes[0].plot([0, 1], [1, 0])
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RuntimeError), png_figure(tmp_path / "b.png", (4, 3)) as (fig, ax):
        ax.plot([0, 1])
        raise RuntimeError("boom")
    assert not (tmp_path / "b.png").exists()
    assert len(plt.get_fignums()) == open_before


def test_rl_plots_draw_from_a_train_log(tmp_path):
    from latentcot.analysis.rl import plot_entropy_profiles, plot_rl_curves, plot_rl_log

    log = tmp_path / "run" / "train_log.jsonl"
    log.parent.mkdir()
    rows = [{"step": s, "reward": 10.0 * s, "accuracy": 5.0 * s} for s in range(1, 4)]
    rows.append({"step": 3, "eval": {"accuracy_strict": 40.0}})
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert plot_rl_log(log, tmp_path / "one.png", "t") == tmp_path / "one.png"
    assert plot_rl_log(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    plot_rl_curves({"soft": [log]}, tmp_path / "curves.png")
    plot_rl_curves({"soft": [log], "hard": [log]}, tmp_path / "rollout.png", accuracy="rollout", window=2)
    with pytest.raises(ValueError):
        plot_rl_curves({"soft": [log]}, tmp_path / "bad.png", accuracy="test")
    plot_entropy_profiles({"base / soft": [1.0, 0.5]}, tmp_path / "ent.png")
    for name in ("one.png", "curves.png", "rollout.png", "ent.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "none.png").exists()
