"""report: not built yet."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from latentcot.errors import LatentCotError

    raise LatentCotError("'latentcot report' is not available yet")
