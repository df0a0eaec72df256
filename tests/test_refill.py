"""Refill (continuous batching), finished rows leaving the batch, and cheap stop-string checks.

Refill and compaction may only change speed: every record must equal the static-batch record, sample for sample.
"""

from __future__ import annotations

import collections
import json

import pytest
import torch

from latentcot.cli.main import main
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import GenerationConfig
from latentcot.decoding.stopping import StopMatcher
from latentcot.eval.runner import can_refill, evaluate, read_samples
from latentcot.methods import METHODS, build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens


@pytest.fixture
def early_eos(arith_task, monkeypatch):
    """tiny-llama with three tokens it often writes (never first) counted as EOS: rows end at many lengths.

    (tiny-gpt2 writes one token forever when greedy, so its rows could only end all at once.)"""
    bb = Backbone(*load_model("tiny-llama"), "tiny-llama")
    m = build_method("cot", {}, bb)
    outs = m.generate(arith_task.load("test"), arith_task, GenerationConfig(max_new_tokens=24), None)
    firsts = {o.token_ids[0] for o in outs if o.token_ids}
    counts = collections.Counter(t for o in outs for t in o.token_ids if t not in firsts)
    frequent = [t for t, _ in counts.most_common(3)]
    monkeypatch.setattr(Backbone, "eos_ids", property(lambda self: frequent))
    return bb


def _records(path):
    return {(r["id"], r["seed"], r["sample"]): {k: v for k, v in r.items() if k != "seconds"} for r in read_samples(path)}


@pytest.mark.parametrize(
    "method,settings",
    [("cot", {}), ("coconut", {"max_stage": 2}), ("cot_unk", {"num_thoughts": 2})],
)
@pytest.mark.parametrize(
    "gen",
    [
        GenerationConfig(max_new_tokens=20),
        GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, num_samples=2),
        GenerationConfig(max_new_tokens=20, stop=["e"]),
    ],
    ids=["greedy", "sampled", "stop"],
)
def test_refill_gives_the_static_batches_samples(early_eos, arith_task, tmp_path, method, settings, gen):
    torch.manual_seed(0)
    m = build_method(method, settings, early_eos)
    assert can_refill(m)
    exs = arith_task.load("test")
    evaluate(m, arith_task, exs, gen, [0, 1], tmp_path / "static", batch_size=3, progress=False)
    evaluate(m, arith_task, exs, gen, [0, 1], tmp_path / "refill", batch_size=3, progress=False, refill=True)
    static, refill = _records(tmp_path / "static" / "samples.jsonl"), _records(tmp_path / "refill" / "samples.jsonl")
    assert len(static) == 2 * len(exs) * gen.num_samples
    assert refill == static
    lengths = {r["generated_tokens"] for r in static.values()}
    assert len(lengths) >= 3, "the rows should end at different lengths for this test to mean anything"


def test_finished_rows_leave_the_batch(early_eos, monkeypatch):
    """Once a row has ended, no later model call computes it; the rest still decode as if alone."""
    bb = early_eos
    eng = Engine(bb)
    prompts = [bb.encode(bb.chat_prompt(q)) for q in ("What is 2+3?", "A longer question about plums?", "Hi", "Why?")]
    sizes = []
    real = bb.forward

    def spy(*args, **kwargs):
        sizes.append(int((args[0] if args else kwargs["inputs_embeds"]).shape[0]))
        return real(*args, **kwargs)

    cfg = GenerationConfig(max_new_tokens=24)
    state = eng.prefill(splice([[tokens(p)] for p in prompts], bb.embed, 0))  # (one call or one per length group)
    monkeypatch.setattr(bb, "forward", spy)
    outs = eng.generate(state, cfg)
    monkeypatch.setattr(bb, "forward", real)
    steps = sorted(o.decode_steps for o in outs)
    assert steps[0] < steps[-1]
    # decode call k (k >= 1) computes exactly the rows still running after k choices
    for k, size in enumerate(sizes, 1):
        assert size == sum(s > k for s in steps)
    for p, o in zip(prompts, outs):
        alone = eng.generate(eng.prefill(splice([[tokens(p)]], bb.embed, 0)), cfg)[0]
        assert (alone.token_ids, alone.finish_reason) == (o.token_ids, o.finish_reason)


@pytest.mark.parametrize("stops", [["e", "1", " t", "\n\n", "ab", "? "], ["e", "\u00e9t\u00e9", "\u00e9"]], ids=["ascii", "non-ascii"])
def test_stop_matcher_equals_decoding_every_step(tiny, stops):
    """The cheap check fires at exactly the step where decoding the whole text first shows a stop string."""
    gen = torch.Generator().manual_seed(0)
    matcher = StopMatcher(tiny.tokenizer, stops)
    assert 0 < len(matcher.candidates) < len(tiny.tokenizer)
    texts = [tiny.encode("we go to caf\u00e9 in \u00e9t\u00e9? ok 1 t")]
    for _ in range(300):
        texts.append(torch.randint(0, len(tiny.tokenizer), (30,), generator=gen).tolist())
    for ids in texts:
        ref = next((i for i in range(1, len(ids) + 1) if any(s in tiny.decode(ids[:i]) for s in stops)), None)
        got = next((i for i in range(1, len(ids) + 1) if matcher.hit(ids[:i])), None)
        assert got == ref


def test_stop_strings_are_not_decoded_at_every_step(monkeypatch):
    tiny = Backbone(*load_model("tiny-gpt2"), "tiny-gpt2")  # it writes one ASCII token that is no candidate
    eng = Engine(tiny)
    prompt = tiny.encode(tiny.chat_prompt("Hi"))
    eng.generate(eng.prefill(splice([[tokens(prompt)]], tiny.embed, 0)), GenerationConfig(max_new_tokens=2, stop=["\x00"]))
    calls = []
    real = tiny.tokenizer.decode
    monkeypatch.setattr(tiny.tokenizer, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = eng.generate(eng.prefill(splice([[tokens(prompt)]], tiny.embed, 0)), GenerationConfig(max_new_tokens=30, stop=["\x00"], ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(calls) <= 2  # the final text only, not one decode per token


def test_refill_with_a_method_that_cannot_is_refused(tmp_path, capsys):
    cannot = sorted(n for n in METHODS.names() if not METHODS.get(n).refills)
    assert "soft_thinking" in cannot
    out = tmp_path / "run"
    code = main(["eval", "--method", "soft_thinking", "--model", "tiny-gpt2", "--task", "pointer_chase", "--limit", "2",
                 "--out", str(out), "refill=true", "progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "refill" in err[0] and "soft_thinking" in err[0]
    assert not out.exists()


def test_eval_refill_records_the_same_and_is_off_by_default_on_cpu(tmp_path, monkeypatch):
    import latentcot.eval.runner as runner

    used = []
    real = runner._refill
    monkeypatch.setattr(runner, "_refill", lambda *a, **k: (used.append(True), real(*a, **k))[1])
    base = ["eval", "--method", "cot", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "5", "batch_size=2",
            "max_new_tokens=6", "progress=false"]
    assert main([*base, "--out", str(tmp_path / "a"), "refill=true"]) == 0
    assert used == [True]
    assert main([*base, "--out", str(tmp_path / "b"), "refill=false"]) == 0
    assert main([*base, "--out", str(tmp_path / "c")]) == 0  # CPU default: static batches
    assert used == [True]
    a, b, c = (_records(tmp_path / d / "samples.jsonl") for d in "abc")
    assert a == b == c and len(a) == 5
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["method"] == "cot"


def test_refill_writes_new_rows_into_finished_slots(early_eos, monkeypatch):
    """While questions are waiting, a finished row's slot takes the next one in place (`rows.place_rows`): every
    decode step computes the full batch and no row surgery copies the cache; the outputs are each row's alone."""
    from latentcot.decoding import engine as engine_mod

    bb = early_eos
    eng = Engine(bb)
    eng._split = False  # one forward per prefill (a split prefill merges its groups by row surgery)
    questions = ["What is 2+3?", "A longer question about plums?", "Hi", "Why?", "Four and five?", "Go on", "Nine?"]
    prompts = [bb.encode(bb.chat_prompt(q)) for q in questions]
    cfg = GenerationConfig(max_new_tokens=24)
    start = lambda idx: eng.prefill(splice([[tokens(prompts[i])] for i in idx], bb.embed, 0))  # noqa: E731
    placed, copies, sizes = [], [], []
    real_place, real_select, real_step = engine_mod.place_rows, engine_mod.select_rows, eng.step
    monkeypatch.setattr(engine_mod, "place_rows", lambda s, slots, new: placed.append((real_place(s, slots, new),
                                                                                         len(slots))) or placed[-1][0])
    monkeypatch.setattr(engine_mod, "select_rows", lambda s, keep: copies.append(len(placed)) or real_select(s, keep))
    monkeypatch.setattr(eng, "step", lambda s, *a: sizes.append((len(placed), s.batch_size)) or real_step(s, *a))
    outs = dict(eng.generate_stream(start, len(prompts), 3, cfg, lambda idx: None))
    assert all(ok for ok, _ in placed) and sum(n for _, n in placed) == len(prompts) - 3  # each waiting one took a slot
    assert all(n == len(placed) for n in copies)  # rows left the batch only after the last question started
    assert all(size == 3 for n, size in sizes if n < len(placed))
    for i, p in enumerate(prompts):
        alone = eng.generate(eng.prefill(splice([[tokens(p)]], bb.embed, 0)), cfg)[0]
        assert (alone.token_ids, alone.finish_reason) == (outs[i].token_ids, outs[i].finish_reason)


def test_refill_rows_seconds_add_up_to_the_loop_time(early_eos):
    """Each row's `seconds` is its share of its prefill and of the steps it ran in: over a refilled stream they add
    up to the stream's wall clock (not more: every step's time is split among its unfinished rows, none counted
    twice), and every row carries at least its own prefill, the first batch's included."""
    import time

    bb = early_eos
    eng = Engine(bb)
    questions = ["What is 2+3?", "A longer question about plums?", "Hi", "Why?", "Four and five?", "Go on", "Nine?"]
    prompts = [bb.encode(bb.chat_prompt(q)) for q in questions]
    pause = 0.02  # per prefilled row: a prefill that takes a known minimum time

    def start(idx):
        time.sleep(pause * len(idx))
        return eng.prefill(splice([[tokens(prompts[i])] for i in idx], bb.embed, 0))

    t0 = time.perf_counter()
    outs = dict(eng.generate_stream(start, len(prompts), 3, GenerationConfig(max_new_tokens=24), lambda idx: None))
    wall = time.perf_counter() - t0
    total = sum(o.seconds for o in outs.values())
    assert len(outs) == len(prompts) and 0.9 * wall <= total <= wall
    assert all(o.seconds >= pause for o in outs.values())
