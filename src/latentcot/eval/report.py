"""Comparing runs: a markdown table of every run directory's metrics and an accuracy-vs-decode-steps plot.

A run directory is what `latentcot eval` or `latentcot score` writes: config.yaml (the resolved settings) and
metrics.json. The plot puts one labelled point per run at (decode steps per question, accuracy); matplotlib is
imported only when a plot is drawn, with the Agg backend so no display is needed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from latentcot import atomic
from latentcot.errors import DataError
from latentcot.eval.runner import METRICS

log = logging.getLogger(__name__)

REPORT = "report.md"
PLOT = "accuracy_vs_steps.png"
_K_RE = re.compile(r"^(pass|sc)@(\d+)_(strict|flexible)$")


@dataclass
class RunSummary:
    """One run directory: where it is, its settings (config.yaml, may be empty) and its metrics."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    def setting(self, key: str, default: str = "-") -> str:
        run = self.config.get("run") or {}
        return str(run.get(key) or self.metrics.get(key) or default)

    @property
    def label(self) -> str:
        return f"{self.setting('method')} / {Path(self.setting('model')).name}"

    @property
    def steps_per_question(self) -> float:
        """Decode steps spent per question and seed, every sample counted (nan when the run has none)."""
        steps = self.metrics.get("decode_steps")
        q, n, seeds = self.metrics.get("questions"), self.metrics.get("samples"), self.metrics.get("seeds") or [0]
        if not isinstance(steps, dict) or not q or not n:
            return math.nan
        return float(steps["mean"]) * n / (q * len(seeds))


def load_run(path: str | Path) -> RunSummary:
    """Reads a run directory.

    Raises:
        DataError: the directory or its metrics.json is missing or unreadable.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory: pass run directories written by `latentcot eval` or `score`")
    mfile = path / METRICS
    if not mfile.is_file():
        from latentcot.preflight import run_kind

        if run_kind(path) == "training":  # a training run: its evaluation is a run of its own
            raise DataError(f"{path} is a training run: evaluate it (`latentcot eval --method M ... weights={path} "
                            "--out DIR`) and report DIR")
        raise DataError(
            f"{mfile} not found: {path} is not a finished run (run `latentcot eval --out {path}` to finish it)"
        )
    try:
        metrics = json.loads(mfile.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {mfile}: {e}") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{mfile} is not a metrics object")
    config: dict[str, Any] = {}
    cfile = path / "config.yaml"
    if cfile.is_file():
        try:
            config = yaml.safe_load(cfile.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"cannot read {cfile}: {e}") from None
    else:
        log.warning("%s has no config.yaml: method and model are taken from metrics.json", path)
    return RunSummary(path, config if isinstance(config, dict) else {}, metrics)


def _ms(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if not isinstance(v, dict) or v.get("mean") is None or math.isnan(v["mean"]):
        return "-"
    std = v.get("std") or 0.0
    return f"{v['mean']:.2f} ± {std:.2f}" if std else f"{v['mean']:.2f}"


def _num(v: Any, fmt: str) -> str:
    if isinstance(v, dict):
        v = v.get("mean")
    if not isinstance(v, int | float) or math.isnan(v):
        return "-"
    return format(v, fmt)


def k_columns(runs: Sequence[RunSummary]) -> list[str]:
    """The pass@k / sc@k keys (k > 1) that any run has, ordered by kind, k, then strict before flexible."""
    keys = {k for r in runs for k in r.metrics if (m := _K_RE.match(k)) and int(m.group(2)) > 1}
    return sorted(keys, key=lambda k: (_K_RE.match(k).group(1), int(_K_RE.match(k).group(2)), k.endswith("flexible")))


def markdown_table(runs: Sequence[RunSummary]) -> str:
    """One row per run: names, accuracies (mean ± std over seeds), pass@k/sc@k, cost and speed."""
    ks = k_columns(runs)
    head = ["run", "method", "model", "task", "questions", "strict acc", "flexible acc", *ks]
    head += ["gen. tokens", "decode steps", "s / question", "questions / s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for r in runs:
        m = r.metrics
        cells = [r.path.name, r.setting("method"), r.setting("model"), r.setting("task"), str(m.get("questions", "-"))]
        cells += [_ms(m, "accuracy_strict"), _ms(m, "accuracy_flexible"), *(_ms(m, k) for k in ks)]
        cells += [
            _num(m.get("generated_tokens"), ".1f"),
            _num(m.get("decode_steps"), ".1f"),
            _num(m.get("seconds_per_question"), ".3f"),
            _num(m.get("questions_per_second"), ".2f"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def plot(runs: Sequence[RunSummary], path: Path, metric: str = "accuracy_strict") -> int:
    """Draws accuracy (`metric` mean) against decode steps per question, one labelled point per run.

    Returns the number of points drawn (runs without decode steps, e.g. scored outputs, are left out).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    drawn = 0
    labels = [r.label for r in runs]
    for r in runs:
        label = r.label if labels.count(r.label) == 1 else f"{r.label} [{r.path.name}]"
        x, y = r.steps_per_question, (r.metrics.get(metric) or {}).get("mean", math.nan)
        if math.isnan(x) or y is None or math.isnan(y):
            log.warning("%s: no decode steps or %s; left out of the plot", r.path, metric)
            continue
        ax.scatter([x], [y], s=36)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        drawn += 1
    ax.set_xlabel("decode steps per question (latent and soft steps included)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_ylim(-3, 103)
    ax.margins(x=0.25)  # room for the labels of the outermost points
    tasks = sorted({r.setting("task") for r in runs})
    ax.set_title(f"accuracy vs decode steps: {', '.join(tasks)}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return drawn


def write_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path, metric: str = "accuracy_strict"
) -> tuple[str, Path, Path]:
    """Loads every run, writes report.md and the plot into `out_dir`; returns (markdown, report path, plot path)."""
    if not run_dirs:
        raise DataError("no run directories given: pass one or more directories written by `latentcot eval`")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / PLOT
    drawn = plot(runs, png, metric)
    text = markdown_table(runs)
    tasks = {r.setting("task") for r in runs}
    notes = []
    if len(tasks) > 1:
        notes.append(f"Runs are on different tasks ({', '.join(sorted(tasks))}): accuracies are not comparable.")
    if drawn < len(runs):
        notes.append(f"{len(runs) - drawn} run(s) have no decode steps and are not in the plot.")
    body = (
        "# latentcot report\n\n"
        + text
        + "\n\nAccuracy in %, mean ± std over seeds; pass@k / sc@k on the first k samples of each question; "
        + "tokens and decode steps are per sample (decode steps count every latent and soft step).\n"
        + "".join(f"\n{n}\n" for n in notes)
        + f"\n![{metric} vs decode steps]({png.name})\n"
    )
    md = out / REPORT
    atomic.write_text(md, body)
    return text, md, png
