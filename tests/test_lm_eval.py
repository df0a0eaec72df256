"""latentcot as an lm-evaluation-harness model, offline: a local YAML task over data the test writes, run through
`latentcot-lm-eval` (the lm-eval command line with the model registered) with tiny-llama, gives the same outputs
and the same accuracies as `latentcot eval` on the same questions and prompt; its --log_samples file scores the
same through `latentcot score`; log-likelihoods for hard-token methods, one clear error for the others."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'latentcot[lmeval]'")

from latentcot.cli.main import main  # noqa: E402
from latentcot.tasks import get_task  # noqa: E402

N, TOKENS = 4, 12

TASK_YAML = """task: lc_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: []
  max_gen_toks: {tokens}
  do_sample: false
process_results: !function lc_scoring.process_results
metric_list:
  - metric: acc_strict
    aggregation: mean
    higher_is_better: true
  - metric: acc_flexible
    aggregation: mean
    higher_is_better: true
"""

# lm-eval's own metric for this task: latentcot's extractors, so the two accuracies must agree exactly
SCORING_PY = """from latentcot.tasks import get_task
from latentcot.tasks.base import Example

TASK = get_task("arith_chain")


def process_results(doc, results):
    s = TASK.score(Example(id=doc["id"], question="", answer=doc["answer"]), results[0])
    return {"acc_strict": float(s["correct_strict"]), "acc_flexible": float(s["correct_flexible"])}
"""


def write_task(tmp_path: Path) -> Path:
    task = get_task("arith_chain")
    rows = [{"id": ex.id, "prompt": task.prompt(ex), "answer": ex.answer} for ex in task.load("test")[:N]]
    folder = tmp_path / "lm_eval_tasks"
    folder.mkdir()
    data = folder / "lc_arith.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "lc_arith.yaml").write_text(TASK_YAML.format(data=data, tokens=TOKENS))
    (folder / "lc_scoring.py").write_text(SCORING_PY)
    return folder


@pytest.mark.parametrize("method", ["cot", "soft_thinking"])
def test_lm_eval_equals_latentcot_eval(tmp_path, monkeypatch, method):
    from latentcot.integrations.lm_eval import main as lm_eval_main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    ours = tmp_path / "ours"
    assert main(["eval", "--method", method, "--model", "tiny-llama", "--task", "arith_chain", "--limit", str(N),
                 "--out", str(ours), "--no-progress", f"max_new_tokens={TOKENS}", "batch_size=3"]) == 0  # fmt: skip
    mine = json.loads((ours / "metrics.json").read_text())
    outputs = [json.loads(line)["output"] for line in (ours / "samples.jsonl").read_text().splitlines()]

    folder = write_task(tmp_path)
    rc = lm_eval_main(["--model", "latentcot", "--model_args", f"model=tiny-llama,method={method},progress=false",
                       "--tasks", "lc_arith", "--include_path", str(folder), "--batch_size", "2",
                       "--output_path", str(tmp_path / "lm_eval_out"), "--log_samples"])  # fmt: skip
    assert rc == 0
    (results_file,) = (tmp_path / "lm_eval_out").rglob("results_*.json")
    res = json.loads(results_file.read_text())["results"]["lc_arith"]
    (samples_file,) = (tmp_path / "lm_eval_out").rglob("samples_lc_arith_*.jsonl")
    logged = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda r: r["doc_id"])
    assert [r["resps"][0][0] for r in logged] == outputs  # the same prompt text gives the same outputs
    assert 100 * res["acc_strict,none"] == pytest.approx(mine["accuracy_strict"]["mean"])
    assert 100 * res["acc_flexible,none"] == pytest.approx(mine["accuracy_flexible"]["mean"])

    # the --log_samples file, read back by `latentcot score` (format detected from its name), scores the same
    assert main(["score", "--task", "arith_chain", str(samples_file), "--out", str(tmp_path / "rescored")]) == 0
    again = json.loads((tmp_path / "rescored" / "metrics.json").read_text())
    assert again["format"] == "lm-eval" and again["lines"]["own_gold"] == N
    for key in ("accuracy_strict", "accuracy_flexible"):
        assert again[key]["mean"] == pytest.approx(mine[key]["mean"])


class Req:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_hard_methods_and_refusal():
    import torch

    from latentcot.errors import ConfigError
    from latentcot.integrations.lm_eval import LatentCotLM

    lm = LatentCotLM(model="tiny-llama", method="cot", progress=False)
    bb = lm.method.backbone
    context, a, b = "The answer is", " 4", "2"
    (lp_a, _), (lp_b_after_a, _), (lp_ab, _) = lm.loglikelihood(
        [Req(context, a), Req(context + a, b), Req(context, a + b)]
    )
    # independent check: the HF model's own forward over the token ids, log-softmax summed by hand
    ids = [bb.tokenizer.bos_token_id] if bb.tokenizer.bos_token_id is not None else []
    ctx, whole = bb.encode(context), bb.encode(context + a + b)
    with torch.no_grad():
        logits = bb.model(input_ids=torch.tensor([ids + whole])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    want = sum(logp[len(ids) + t - 1, whole[t]].item() for t in range(len(ctx), len(whole)))
    assert lp_ab == pytest.approx(want, abs=1e-4)
    if bb.encode(context + a) == whole[: len(bb.encode(context + a))]:  # no merge across the a|b boundary
        assert lp_ab == pytest.approx(lp_a + lp_b_after_a, abs=1e-4)  # chain rule
    # greedy: the continuation the model itself would pick is flagged greedy
    nxt = int(logp[len(ids) + len(ctx) - 1].argmax())
    (_, greedy), = lm.loglikelihood([Req(context, bb.decode([nxt]))]) if bb.encode(context + bb.decode([nxt])) == ctx + [nxt] else [(0, True)]  # fmt: skip
    assert greedy
    (rolling,) = lm.loglikelihood_rolling([Req("The answer is 42.")])
    assert rolling < 0 and math.isfinite(rolling)

    soft = LatentCotLM(model="tiny-llama", method="soft_thinking", progress=False)
    with pytest.raises(ConfigError, match="method 'soft_thinking' has no log-likelihood.*generate_until"):
        soft.loglikelihood([Req(context, a)])


def test_bad_model_args_are_one_line(capsys, monkeypatch):
    import lm_eval.__main__

    from latentcot.errors import LatentCotError
    from latentcot.integrations.lm_eval import LatentCotLM
    from latentcot.integrations.lm_eval import main as lm_eval_main

    with pytest.raises(LatentCotError, match="no_such_method"):
        LatentCotLM.create_from_arg_string("model=tiny-llama,method=no_such_method", {"batch_size": 1})

    def fail():  # what lm-eval's CLI does with such model_args: builds the model, which raises
        LatentCotLM.create_from_arg_string("model=tiny-llama,method=no_such_method")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", fail)
    assert lm_eval_main(["--model", "latentcot", "--model_args", "method=no_such_method", "--tasks", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentcot-lm-eval: error:") and "no_such_method" in err[0]
