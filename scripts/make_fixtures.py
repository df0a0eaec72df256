"""Regenerates tests/fixtures/real_outputs/*.jsonl: real model outputs for the answer-extraction tests.

Runs zero-shot `cot` with greedy decoding through the library (pipeline.resolve + evaluate_run, the same path as
`latentcot eval`) on the first questions of every real benchmark, and stores per task one JSONL line per
(model, question): {"task", "model", "id", "output", "gold"}. The expected extractions are hand-labelled in
tests/test_real_outputs.py, so after regenerating, re-read every output and update that table.

Usage (slow on CPU: SmolLM2-135M ~23 tok/s, Qwen2.5-Coder-0.5B ~8 tok/s):
    LATENTCOT_DATA=../shared/data python scripts/make_fixtures.py [--models smollm2-135m-instruct ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from latentcot.config import to_dict
from latentcot.eval.runner import SAMPLES, read_samples
from latentcot.pipeline import build, evaluate_run, resolve
from latentcot.tasks import get_task

REAL_TASKS = (
    "gsm8k", "asdiv", "svamp", "multiarith", "addsub", "singleeq", "gsm_hard",
    "aqua", "strategyqa", "date_understanding", "commonsenseqa", "math500", "prosqa",
)  # fmt: skip
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real_outputs"

log = logging.getLogger("make_fixtures")


def settings(model: str, task: str, args: argparse.Namespace, out: Path) -> dict:
    return {
        "method": "cot", "model": model, "task": task, "limit": args.n, "out": str(out),
        "max_new_tokens": args.max_new_tokens, "temperature": 0.0, "batch_size": args.n, "progress": False,
        **({"data_dir": args.data_dir} if args.data_dir else {}),
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m-instruct"])
    p.add_argument("--tasks", nargs="+", default=list(REAL_TASKS))
    p.add_argument("--n", type=int, default=2, help="questions per task")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--data-dir", help="benchmark data (default $LATENTCOT_DATA)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop starting new tasks after this long")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lines = {t: existing(args.out, t, args.models) for t in args.tasks}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            method = None
            for task_name in args.tasks:
                if time.time() - t0 > 60 * args.max_minutes:
                    log.warning("time cap reached: skipping %s on %s", model, task_name)
                    continue
                run_dir = Path(tmp) / f"{model}-{task_name}"
                res = resolve(settings(model, task_name, args, run_dir))
                if method is None:
                    method, _ = build(res)  # the model loads once per model, the task per task
                task = get_task(res.run.task, **to_dict(res.task))
                evaluate_run(res, method, task)
                for rec in sorted(read_samples(run_dir / SAMPLES), key=lambda r: str(r["id"])):
                    lines[task_name].append(
                        {
                            "task": task_name,
                            "model": model,
                            "id": rec["id"],
                            "output": rec["output"],
                            "gold": rec["gold"],
                        }
                    )
                write(args.out, task_name, lines[task_name])
                log.info("%s %s done (%.0f s so far)", model, task_name, time.time() - t0)


def existing(out: Path, task: str, models: list[str]) -> list[dict]:
    """Lines of other models already in the fixture, kept so models can be generated in separate runs."""
    path = out / f"{task}.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("model") not in models]


def write(out: Path, task: str, rows: list[dict]) -> None:
    (out / f"{task}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main()
