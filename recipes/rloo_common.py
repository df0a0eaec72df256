"""What the RLOO recipes share (`rloo_pointer_chase.py`, `rloo_smollm2.py`, `rloo_paired_base.py`, `rloo_eval.py`,
`rloo_grad_diag.py`, `rloo_cot_vs_answer.py`; run as scripts, which puts this folder on the import path): a training
run that is resumed or reused, the MODE=VALUE / KEY=VALUE options, the quarters of a run's steps, and how a recipe
ends on an error a user can cause. (A recipe checks all its runs' settings up front with `pipeline.check_runs`.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path


def train(values: dict, out: Path, progress: bool = False) -> dict:
    """`latentcot train` with these settings into `out` (resumes; a finished run is reused)."""
    from latentcot.pipeline import resolve, train_run

    summary = out / "train_summary.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    return train_run(resolve({**values, "out": str(out), "progress": progress}))


def key_values(items: list[str], flag: str, cast, keys: list[str] | None = None, kind: str | None = None) -> dict:
    """KEY=VALUE items -> {key: cast(value)}. A malformed item, a key not in `keys` (when given) or a value `cast`
    refuses is one line on stderr and exit 2, before anything is written; `kind` names the value in that line."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep or (keys is not None and key not in keys):
                raise ValueError
            out[key] = cast(value)
        except ValueError:
            what = f"KEY one of {', '.join(keys)}" if keys is not None else "KEY a setting"
            kind = kind or {float: "a number", int: "an integer"}.get(cast, "a value")
            print(f"error: {flag} {item!r}: write KEY=VALUE with {what} and VALUE {kind}", file=sys.stderr)
            sys.exit(2)
    return out


def quarters(rows: list) -> list[list]:
    """`rows` (one per step) cut into four consecutive quarters, the last taking the remainder; fewer than four
    rows give fewer parts (every part non-empty)."""
    q = max(1, len(rows) // 4)
    return [part for part in (rows[:q], rows[q:2 * q], rows[2 * q:3 * q], rows[3 * q:]) if part]


def run_main(main: Callable[[], None]) -> None:
    """main(), ended as the CLI ends (`cli.common.run_script`): an error a user can cause is one line on stderr and
    exit 2; Ctrl-C says how to go on (the recipes' runs resume) and exits 130."""
    from latentcot.cli.common import run_script

    run_script(main, resumable=True)
