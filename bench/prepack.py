"""When does a oneDNN-packed weight pay? Plain `F.linear` against the packed product, per layer shape and rows.

The engine multiplies with packed weights (`latentcot.decoding.prepack`) inside its CPU calls: a weight of at least
`PACK_MIN` entries in every call, a smaller one when the call's rows x entries reach `PACK_WORK`. oneDNN's call has a
fixed cost, so whether packing pays depends on the work of the call, not on the layer alone. This prints, for layer
shapes of the tiny test models, the demo's GPT-2 (d=128) and smollm2-135m (d=576) and for 1 to 1600 rows (a decode
step at batch 1 to 100, a prefill), the median microseconds of each and their ratio, and marks the calls the rule
packs with `*`.

    .venv/bin/python bench/prepack.py [--threads 2] [--rows 1,8,32,100,1600]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from machine import preflight, verdict
from torch import nn

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.decoding import prepack

SHAPES = [(64, 64), (64, 256), (128, 128), (128, 384), (128, 512), (512, 128), (576, 192), (576, 576), (576, 1536)]


def median_us(fn, n: int = 200) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def cell(rows: int, k: int, n: int) -> str:
    """One table cell: a (rows, k) input times an (n, k) weight, plain and packed, and whether the engine packs it."""
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, prepack.PACK_ROWS)
    plain = median_us(lambda: F.linear(x, w, b))
    fast = median_us(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""))
    layer = nn.Linear(k, n)
    prepack.prepare(layer)  # the engine's own conversion and rule decide the mark
    rule = isinstance(layer, prepack.PackedLinear) and prepack.packs(layer, rows)
    return f"{plain:.0f} / {fast:.0f} ({plain / fast:.2f}x){' *' if rule else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,8,32,100,1600", type=positive_ints, help="rows per call")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    if not prepack.available():
        raise SystemExit("prepack.py: this torch build has no oneDNN packed linear; nothing to measure")
    torch.set_num_threads(args.threads)
    watch = preflight(args.allow_contended)
    print(f"us per call, plain F.linear / packed (plain / packed); * = packed by the engine's rule (PACK_MIN "
          f"{prepack.PACK_MIN}, PACK_WORK {prepack.PACK_WORK}, PACK_FLOOR {prepack.PACK_FLOOR}); "
          f"{torch.get_num_threads()} thread(s)")
    print("| in x out | " + " | ".join(f"{m} rows" for m in args.rows) + " |")
    print("|---|" + "---:|" * len(args.rows))
    torch.manual_seed(0)
    with torch.no_grad():
        for k, n in SHAPES:
            print(f"| {k} x {n} | " + " | ".join(cell(m, k, n) for m in args.rows) + " |")
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
