"""List registered methods, tasks, or model aliases (with whether each model is installed)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["methods", "tasks", "models"])


def run(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from latentcot.methods import METHODS, _register_all

        _register_all()
        for name, cls in METHODS.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:16s} {'trains' if cls.trains else 'training-free':13s} {doc}")
    elif args.what == "tasks":
        from latentcot.tasks import TASKS, _register_all

        _register_all()
        for name, cls in TASKS.items():
            print(f"{name:20s} splits: {', '.join(cls.splits)}")
    else:
        from latentcot.models.loading import known_aliases

        for a in known_aliases():
            ok = a.installed()
            print(f"{a.name:28s} {'installed' if ok else 'missing':10s} {a.description}" + ("" if ok else f"  [{a.install_hint}]"))
        print(f"{'scratch-ARCH:TASK':28s} {'built in':10s} from-scratch tiny model + word-level tokenizer over a synthetic "
              "task, e.g. scratch-gpt2:pointer_chase (options: scratch-gpt2-d128-l4-h4-p256:TASK,key=value)")
        print("also: any HF hub id or local directory (safetensors), or a .gguf file")
    return 0
