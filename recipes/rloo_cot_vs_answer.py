"""Where a pointer-chasing RLOO run gains or loses: for its first and last held-out evaluation (greedy samples in
RUN/eval_stepN/samples.jsonl), the share of questions with the whole chain of thought right (the words before the
first `####`), the share answered right (the word after the last `####`, the task's strict extraction), the share
answered right among those whose CoT is right (the answer step alone), and the share answered with the start node
(the shortcut that is right whenever the walk returns to its start).

    python recipes/rloo_cot_vs_answer.py --answer-hops 1 runs/rloo-pc-ah1/rloo-*-s[01]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rloo_common import run_main


def stats(path: Path, held: dict) -> dict:
    n = right = cot = given = start = 0
    for line in path.read_text().splitlines():
        r = json.loads(line)
        ex = held[r["id"]]
        words = r["output"].split()
        first = words.index("####") if "####" in words else len(words)
        last = len(words) - 1 - words[::-1].index("####") if "####" in words else len(words)
        answer = words[last + 1] if last + 1 < len(words) else None
        ok_cot = words[:first] == list(ex.steps)
        n, right, cot = n + 1, right + (answer == ex.answer), cot + ok_cot
        given += ok_cot and answer == ex.answer
        start += answer == ex.question.split()[-1]
    return {"acc": 100 * right / n, "cot": 100 * cot / n, "answer_given_cot": 100 * given / max(cot, 1),
            "start": 100 * start / n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--answer-hops", type=int, default=0)
    p.add_argument("--distinct", action="store_true", help="the runs' task had distinct=true")
    a = p.parse_args()
    from latentcot.errors import DataError
    from latentcot.tasks import get_task

    task = get_task("pointer_chase", k=a.k, answer_hops=a.answer_hops, num_train=4000, distinct=a.distinct)
    held = {e.id: e for e in task.load("valid")}
    evals = {run: sorted(run.glob("eval_step*/samples.jsonl"), key=lambda f: int(f.parent.name[len("eval_step"):]))
             for run in a.runs}
    for run, found in evals.items():
        if not found:
            raise DataError(f"{run} holds no held-out evaluation (eval_stepN/samples.jsonl): pass a trained rloo run")
    print("| run | eval | accuracy | CoT all right | answer right when the CoT is right | answer = start node |\n"
          "|---|---|---|---|---|---|")
    for run in a.runs:
        for f in (evals[run][0], evals[run][-1]):
            s = stats(f, held)
            print(f"| {run} | {f.parent.name} | {s['acc']:.1f} | {s['cot']:.1f} | {s['answer_given_cot']:.1f} | {s['start']:.1f} |")


if __name__ == "__main__":
    run_main(main)
