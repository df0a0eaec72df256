"""PNG plots of the analysis commands (soft-thinking diagnostics here, RL curves in `analysis/rl.py`). matplotlib
is imported lazily, with the Agg backend; `png_figure` is the one place a figure is made, laid out, saved and
closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from latentcot import atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def png_figure(path: Path, figsize: tuple[float, float], ncols: int = 1, suptitle: str | None = None,
               dpi: int = 120) -> Iterator[tuple[Any, Any]]:
    """Yields (fig, axes) of a new 1 x ncols figure (axes is one Axes when ncols == 1). When the block ends without
    an error, sets `suptitle` (if given), lays the figure out and writes it as a PNG atomically; the figure is
    closed either way."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        if suptitle is not None:
            fig.suptitle(suptitle)
        fig.tight_layout()
        atomic.save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def plot_entropy(results: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Entropy per step: each question's soft trace (thin), the mean soft and the mean greedy hard trace."""
    import numpy as np

    with png_figure(path, (7, 4)) as (fig, ax):
        for r in results:
            ax.plot(r["entropy"], color="tab:blue", alpha=0.25, linewidth=0.8)
        for key, color, label in (("entropy", "tab:blue", "soft trace (mean)"),
                                  ("hard_entropy", "tab:orange", "greedy hard trace (mean)")):
            curves = [r[key] for r in results if r[key]]
            if curves:
                width = max(len(c) for c in curves)
                grid = np.full((len(curves), width), np.nan)
                for i, c in enumerate(curves):
                    grid[i, : len(c)] = c
                ax.plot(np.nanmean(grid, 0), color=color, linewidth=2, label=label,
                        linestyle="-" if key == "entropy" else "--")
        ax.set_xlabel("step")
        ax.set_ylabel("entropy of next-token distribution (nats)")
        ax.set_title(title or "entropy per step")
        ax.legend()


def plot_js(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """Bars of the mean JS divergence (nats) between next-step distributions after soft / top-1 / top-2 inputs."""
    keys = [("js_soft_top1", "soft vs top-1"), ("js_soft_top2", "soft vs top-2"), ("js_top1_top2", "top-1 vs top-2")]
    means = [summary[k]["mean"] or 0.0 for k, _ in keys]  # None when no step was traced
    stds = [summary[k]["std"] or 0.0 for k, _ in keys]
    with png_figure(path, (5, 4)) as (fig, ax):
        ax.bar([label for _, label in keys], means, yerr=stds, color=["tab:blue", "tab:orange", "tab:gray"], capsize=4)
        ax.set_ylabel("JS divergence of next-step distributions (nats)")
        ax.set_title(title or "soft input vs its top tokens")


def plot_lens(summary: dict[str, Any], path: Path, title: str = "") -> None:
    """Heatmap (layer x step) of the lens probability of the output's top-1 token, mean over questions."""
    import numpy as np

    grid = np.array([[np.nan if v is None else v for v in row] for row in summary["lens_prob_mean"]], dtype=float)
    with png_figure(path, (8, 4.5)) as (fig, ax):
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, label="P(final top-1) under the lens")
        ax.set_xlabel("soft step")
        ax.set_ylabel("layer (0 = embeddings)")
        ax.set_title(title or "logit lens along the soft trace")
