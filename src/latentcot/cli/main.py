"""`latentcot` command line: main(argv) -> exit status. Each subcommand is a module with
`add_arguments(parser)` and `run(args) -> int`; heavy imports happen inside `run`, so `--help` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = {
    "eval": "evaluate a method on a task (resumable)",
    "train": "train a method's trainable parts (resumable)",
    "demo": "train tiny models on a synthetic task and compare methods (the main job)",
    "score": "score outputs made by any system with a task's extractors and metrics",
    "report": "compare run directories: a markdown table and an accuracy-vs-steps plot",
    "analyze": "soft-thinking diagnostics: JS divergence, logit lens, entropy, trace similarity",
    "probe": "decode continuous thoughts through the LM head",
    "ls": "list methods, tasks or models",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentcot", description="Latent (soft) chain-of-thought reasoning: train, evaluate, compare."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in SUBCOMMANDS.items():
        mod = importlib.import_module(f"latentcot.cli.{name}_cmd")
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])  # as given (`train --launch` re-runs it)
    # key=value settings may sit before, between or after the options (argparse stops a positional list at the
    # first option); anything else left over is an error, as with parse_args
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    if late and isinstance(getattr(args, "settings", None), list):
        args.settings += late
        extra = [a for a in extra if a not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "urllib3", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from latentcot.errors import LatentCotError
    from latentcot.models.compat import check_transformers

    try:
        check_transformers()  # before anything imports it: below the floor, one line, exit 2
    except LatentCotError as e:
        print(f"latentcot {args.command}: error: {e}", file=sys.stderr)
        return 2
    if not args.verbose:
        from transformers.utils import logging as hf_logging  # its loggers do not propagate to the root

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # Deprecations raised inside the libraries (e.g. PEFT reading transformers' renamed is_gradient_checkpointing)
        # are not the user's to act on: shown with --verbose only.
        import warnings

        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|accelerate)(\.|$)")
    from latentcot.cli.common import guarded
    from latentcot.heap import keep_freed_memory

    keep_freed_memory()  # the process is ours: no page faults for memory freed and taken again (latentcot.heap)
    return guarded(lambda: args._module.run(args), f"latentcot {args.command}", resumable=True)


def entry() -> None:
    sys.exit(main())
