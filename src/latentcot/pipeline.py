"""A run, assembled: resolved configs (run, generation, method, task, train) and the objects they build.

The CLI, the demo and user scripts all go through here, so `latentcot eval ...` and
`pipeline.evaluate_run(resolve(...))` do the same thing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcot import atomic
from latentcot.config import check, field_types, from_dict, load_yaml, split_sections, to_dict
from latentcot.decoding.sampling import GenerationConfig
from latentcot.errors import CheckpointError, ConfigError, DataError
from latentcot.methods import build_method, method_class
from latentcot.methods.base import Method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks import get_task, task_class
from latentcot.tasks.base import Example, Task
from latentcot.training.loop import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Attributes:
    method: registered method name (`latentcot ls methods`).
    model: backbone: alias, local directory, .gguf file or hub id (`latentcot ls models`).
    task: registered task name (`latentcot ls tasks`).
    split: task split (default: the task's test split; training uses its train split).
    limit: first N questions (0 = all).
    offset: skip the first N questions.
    out: output directory (default runs/<method>-<model>-<task>).
    seeds: sampling seeds, each given once; metrics are mean +- std over them.
    seed: shorthand for a single seed (overrides seeds).
    batch_size: rows (question x sample) per generation batch.
    device: cpu, cuda, or auto.
    dtype: float32, bfloat16 or float16.
    weights: trained weights to load before evaluating (a run directory or a .safetensors file).
    progress: progress bars.
    trust_remote_code: allow a hub model's own code (off by default).
    eval_limit: during training, questions of the eval split scored at each eval (0 = none).
    num_shards: evaluation split by question into this many shards (0 = one per launched process, 1 without a
        launcher); each shard resumes on its own and the shards merge into one samples.jsonl / metrics.json.
    shard: run only this shard (e.g. a SLURM array task); default: the launcher's rank, or every shard in turn.
    backend: "engine" (built in) or "vllm" (plain-prompt methods only; `pip install 'latentcot[vllm]'`).
    refill: continuous batching in `eval`: a finished row's slot takes the next question at once (outputs are the
        same as with static batches). Default (unset): on a GPU, on for methods that can refill; on CPU off, since
        there a step costs about in proportion to its rows (a full batch saves no time) and a refilled row is
        padded to the oldest row's width (more attention): static batches were faster in `bench/throughput.py`.
        true with a method that cannot refill is an error.
    cpu_prepack: on CPU, the decode engine multiplies with oneDNN-packed copies of the model's linear weights
        where the call is large enough (`decoding.prepack`; faster; values differ from plain `F.linear` in the last
        bits, ~1e-5 in logits; costs one more copy of those weights in memory). false: plain `F.linear`, bitwise as
        HF `generate()` computes.
    """

    method: str = "cot"
    model: str = "tiny-gpt2"
    task: str = "gsm8k"
    split: str | None = None
    limit: int = 0
    offset: int = 0
    out: str | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    seed: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "float32"
    weights: str | None = None
    progress: bool = True
    trust_remote_code: bool = False
    eval_limit: int = 0
    num_shards: int = 0
    shard: int | None = None
    backend: str = "engine"
    refill: bool | None = None
    cpu_prepack: bool = True

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.seeds = [self.seed]
        check(self.limit >= 0, "limit", f"must be >= 0 (0 = all), got {self.limit}")
        check(self.offset >= 0, "offset", f"must be >= 0, got {self.offset}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(len(self.seeds) >= 1, "seeds", "needs at least one seed")
        repeated = next((s for i, s in enumerate(self.seeds) if s in self.seeds[:i]), None)
        check(repeated is None, "seeds", f"seed {repeated} is given twice ({_show(self.seeds)}): give each seed once")
        check(self.num_shards >= 0, "num_shards", f"must be >= 0 (0 = one per launched process), got {self.num_shards}")
        check(self.shard is None or self.shard >= 0, "shard", f"must be >= 0, got {self.shard}")
        check(self.backend in ("engine", "vllm"), "backend", f"must be engine or vllm, got {self.backend!r}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", f"unknown device {self.device!r}")


@dataclass
class Resolved:
    run: RunConfig
    generation: GenerationConfig
    method: Any
    task: Any
    train: TrainConfig
    recipe: dict[str, Any] | None = field(default=None, repr=False, compare=False)  # a recipe's notes, never saved

    def to_dict(self) -> dict[str, Any]:
        return {name: to_dict(getattr(self, name)) for name in _SECTIONS}

    @property
    def out_dir(self) -> Path:
        if self.run.out:
            return Path(self.run.out)
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.run.model).name)
        return Path("runs") / f"{self.run.method}-{model}-{self.run.task}"


# `--smoke`: a recipe's run with tiny models and a few steps, so that every recipe can be run on a CPU in a test.
# Layered over the file, under the method's own smoke settings, the recipe's `smoke:` section and the command line.
SMOKE: dict[str, Any] = {
    "model": "tiny-llama", "dtype": "float32", "device": "cpu", "limit": 2, "batch_size": 2, "seeds": [0],
    "eval_limit": 0, "train.max_steps": 2, "train_batch_size": 2, "grad_accum": 1, "train_limit": 8, "save_every": 0,
    "eval_every": 0, "log_every": 1, "warmup_steps": 0, "max_new_tokens": 8, "num_samples": 1, "source": "local",
    "trust_remote_code": False,
}
_SECTIONS = ("run", "generation", "method", "task", "train")


def resolve(values: dict[str, Any], config_file: str | None = None, smoke: bool = False) -> Resolved:
    """Builds every config section from a YAML file (optional) and `values` (flat or dotted keys win over it).

    A recipe file (recipes/*.yaml) may also hold `recipe:` (what the paper reports, hardware, time estimates: read
    by people and tests, not by the run) and `smoke:` (settings applied only with `smoke=True`, over `SMOKE`).
    """
    layers: list[dict[str, Any]] = []
    meta: dict[str, Any] | None = None
    smoke_section: dict[str, Any] = {}
    out_default: str | None = None
    if config_file:
        data = load_yaml(config_file)
        meta = data.pop("recipe", None)
        smoke_section = data.pop("smoke", None) or {}
        for name, part in (("recipe", meta), ("smoke", smoke_section)):
            if part is not None and not isinstance(part, dict):
                raise ConfigError(f"config file {config_file}: {name}: must be a mapping of keys to values")
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, dict) and key in _SECTIONS:
                for k, v in value.items():
                    flat[f"{key}.{k}"] = v
            else:
                flat[key] = value
        layers.append(flat)
        out_default = flat.get("out", flat.get("run.out"))
    given = {k: v for k, v in values.items() if v is not None}
    if smoke:
        model = _pick([SMOKE, smoke_section, given], "model", SMOKE["model"])
        name = _pick(layers + [given], "method", RunConfig.method)
        stem = Path(config_file).stem if config_file else name
        generic = {**SMOKE, "out": f"{out_default or Path('runs') / stem}-smoke"}
        layers.append(generic)
        layers.append(method_class(name).smoke_settings(model))
        layers.append(dict(smoke_section))
    layers.append(given)
    method_name = _pick(layers, "method", RunConfig.method)
    task_name = _pick(layers, "task", RunConfig.task)
    sections = {
        "run": RunConfig,
        "generation": GenerationConfig,
        "method": method_class(method_name).Config,
        "task": task_class(task_name).Config,
        "train": TrainConfig,
    }
    if smoke:  # a generic smoke default that this method or task has no field for is left out
        known = {f for cls in sections.values() for f in field_types(cls)}
        for key in [k for k in generic if k.split(".")[-1] not in known]:  # train.max_steps: a task may have max_steps
            del generic[key]
    routed: dict[str, dict[str, Any]] = {name: {} for name in sections}
    for layer in layers:  # later layers win field by field, whether a key is written flat or dotted
        for sec, part in split_sections(layer, sections).items():
            routed[sec].update(part)
    res = Resolved(**{name: from_dict(cls, routed[name], name) for name, cls in sections.items()})
    res.recipe = meta
    return res


def check_runs(runs: dict[str, dict[str, Any]]) -> None:
    """Resolves (and so checks) the settings of several runs, by name, before the first one starts, as a recipe or the
    demo does: a setting a method refuses is a ConfigError naming its run before anything is trained or written, not
    after the runs before it."""
    for name, values in runs.items():
        try:
            resolve({**values, "progress": False})
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None


def _pick(layers: list[dict[str, Any]], key: str, default: str) -> str:
    """The last layer's value of run field `key`, written flat or dotted."""
    found = default
    for layer in layers:
        for k in (key, f"run.{key}"):
            if layer.get(k) is not None:
                found = layer[k]
    return str(found)


def use_trained_weights(res: Resolved) -> None:
    """`latentcot eval --config RECIPE` evaluates what `latentcot train --config RECIPE` trained: a recipe's run of a
    training method takes its weights from its own output directory unless `weights=` says otherwise."""
    if getattr(res, "recipe", None) is None or res.run.weights or not method_class(res.run.method).trains:
        return
    if (res.out_dir / "trainable.safetensors").is_file():
        res.run.weights = str(res.out_dir)
        log.info("evaluating the weights trained in %s", res.out_dir)
    else:
        log.warning("%s holds no trained weights yet: evaluating the untrained %s (run `latentcot train` with the "
                    "same recipe first)", res.out_dir, res.run.method)


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        local = os.environ.get("LOCAL_RANK")  # one GPU per process under torchrun / accelerate launch
        return f"cuda:{int(local) % torch.cuda.device_count()}" if local is not None else "cuda"
    return name


def load_backbone(name: str, run: RunConfig) -> Backbone:
    model, tok = load_model(name, dtype=run.dtype, device=pick_device(run.device), trust_remote_code=run.trust_remote_code)
    bb = Backbone(model, tok, name)
    bb.cpu_prepack = run.cpu_prepack
    return bb


def build(res: Resolved) -> tuple[Method, Task]:
    if res.run.backend == "vllm":  # checked before any model loads
        from latentcot.decoding.vllm_backend import check_servable, require_vllm

        check_servable(method_class(res.run.method))
        require_vllm()
    task = get_task(res.run.task, **to_dict(res.task))
    backbone = load_backbone(res.run.model, res.run)
    method = build_method(res.run.method, to_dict(res.method), backbone)
    if res.run.weights:
        from latentcot.training.checkpoint import load_weights

        try:
            method.load_trainable_state_dict(load_weights(res.run.weights), res.run.weights)
        except CheckpointError as e:
            hint = trained_with(res)
            if hint is None:
                raise
            raise CheckpointError(f"{e}; {hint}") from None
    if res.run.backend == "vllm":
        from latentcot.decoding.vllm_backend import VLLMBackend

        trained = bool(res.run.weights) and any(n.startswith("backbone.") for n, _ in method.trainable_parameters())
        method.generator = VLLMBackend(method.backbone, modified=trained)
    return method, task


def trained_with(res: Resolved) -> str | None:
    """When `weights=` is a training run of another method, a hint naming it; when its method settings differ from
    these (`lora_r`, say, which decides what the trained weights are), a hint naming them as that run had them; None
    when there is nothing to name."""
    from latentcot.preflight import read_back_yaml

    path = Path(res.run.weights or "") / "train_config.yaml"
    if not path.is_file():
        return None
    try:
        data = read_back_yaml(path)
    except DataError:  # a damaged config: the error about the weights stands alone
        return None
    run = data.get("run")
    ran = run.get("method") if isinstance(run, dict) else None
    if isinstance(ran, str) and ran != res.run.method:
        return f"that run trained method {ran!r}: evaluate its weights with --method {ran}"
    there = data.get("method")
    if not isinstance(there, dict):
        return None
    here = json.loads(json.dumps(to_dict(res.method)))
    diff = [f"{k}={_show(v)}" for k, v in there.items() if k in here and here[k] != v]
    if not diff:
        return None
    more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
    return f"that run was trained with {' '.join(diff[:6])}{more}: pass the same settings to load its weights"


def select_examples(task: Task, split: str | None, offset: int, limit: int) -> list[Example]:
    examples = task.load(split)
    chosen = examples[offset : offset + limit] if limit else examples[offset:]
    if not chosen:
        raise DataError(f"the selection is empty: task {task.name} split {split or task.default_split} has {len(examples)} questions, offset={offset} limit={limit}")
    return chosen


# Settings that do not change results: a resumed run may differ in these. Training keys matter only to
# training: an evaluation directory ignores them, a training directory compares them (and the seed).
# task.source: runs made before source=auto became the default say "local"; auto reads the same local files.
_FREE = {"run.progress", "run.batch_size", "run.limit", "run.offset", "run.seeds", "run.seed", "run.out", "run.device", "run.eval_limit",
         "run.shard", "run.refill", "train.save_every", "task.source"}
_FREE_EVAL = ("train.",)


def check_resume(out_dir: Path, res: Resolved, name: str = "config.yaml") -> None:
    """Refuses to continue a run directory made with other result-affecting settings, naming the first one."""
    from latentcot.preflight import first_difference, flatten, other_settings, read_back_yaml, run_kind

    training = name == "train_config.yaml"
    if run_kind(out_dir) == "score":  # a score run's config.yaml is not an evaluation's settings
        kind = "a training" if training else "an evaluation"
        raise ConfigError(f"{out_dir} holds a score run (`latentcot score`), not {kind} run: pass another --out")
    path = out_dir / name
    if not path.is_file():
        return
    old = flatten(read_back_yaml(path))
    new = flatten(json.loads(json.dumps(res.to_dict())))
    # A field added after the directory was made (in any section) counts as its default there.
    defaults = flatten(json.loads(json.dumps({sec: to_dict(type(getattr(res, sec))()) for sec in _SECTIONS})))
    old = {**{k: v for k, v in defaults.items() if k in new and k not in old}, **old}
    if training:  # training uses the first seed (data order, initialisation)
        old["run.first_seed"] = (old.get("run.seeds") or [None])[0]
        new["run.first_seed"] = (new.get("run.seeds") or [None])[0]
    k = first_difference(old, new, lambda s: s in _FREE or (not training and s.startswith(_FREE_EVAL)))
    if k is not None:
        key = "run.seed" if k == "run.first_seed" else k  # "seed" alone may name a task setting too
        raise other_settings(out_dir, key, old.get(k), new.get(k), f"set {key}={_show(old.get(k))} to resume it")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def preflight(res: Resolved, out: Path) -> None:
    """Checks that need no model: the output path and the device."""
    from latentcot.preflight import check_device, check_out_dir

    check_out_dir(out)
    check_device(res.run.device)


def check_context(method: Method, task: Task, examples: list[Example], max_new_tokens: int) -> None:
    from latentcot.preflight import check_context as check

    check(method, task, examples, max_new_tokens)


def warn_untrained(method: Method, weights: str | None) -> str | None:
    from latentcot.preflight import warn_untrained as warn

    return warn(method, weights)


def record_warnings(out: Path, metrics: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Adds the run's warnings to metrics.json (so a table made later still shows them)."""
    if warnings:
        metrics["warnings"] = warnings
        atomic.write_json(out / "metrics.json", metrics)
    return metrics


@contextlib.contextmanager
def first_write(out_dir: Path, name: str):
    """Around a run's first write (its `name` config) and the work after it: when that work fails before it has
    written anything else (a setting a method only checks on its first batch, say), the config this run wrote is
    removed again (and the directory, when this run made it), so the corrected command starts afresh instead of
    being refused as a resume with other settings."""
    made_dir, made = not out_dir.exists(), not (out_dir / name).exists()
    try:
        yield
    except Exception:
        if made and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {name}:
            (out_dir / name).unlink(missing_ok=True)
            if made_dir:
                out_dir.rmdir()
        raise


def save_config(out_dir: Path, res: Resolved, name: str = "config.yaml") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = res.to_dict()
    data["run"]["shard"] = None  # every shard of a run writes the same config
    atomic.write_yaml(out_dir / name, data)


def evaluate_run(res: Resolved, method: Method | None = None, task: Task | None = None) -> dict[str, Any] | None:
    """`latentcot eval`: evaluates, resuming in the output directory. Sharded: runs this process's shards and
    returns the merged metrics, or None while other shards are unfinished."""
    from latentcot.eval.runner import evaluate
    from latentcot.eval.shards import check_shard_layout, evaluate_sharded, resolve_shards

    out = res.out_dir
    n, mine = resolve_shards(res.run.num_shards, res.run.shard)
    res = dataclasses.replace(res, run=dataclasses.replace(res.run, num_shards=n))  # the count actually used
    preflight(res, out)
    check_resume(out, res)
    check_shard_layout(out, n)
    if res.run.refill and not method_class(res.run.method).refills:
        raise ConfigError(
            f"refill: method {res.run.method!r} cannot refill (its rows do not all run one start state + the "
            "token loop, e.g. they switch phases under a controller): drop refill=true or set refill=false"
        )
    built = method is None or task is None
    if built:
        method, task = build(res)
    from latentcot.eval.runner import can_refill

    refill = (can_refill(method) and method.backbone.device.type != "cpu") if res.run.refill is None else res.run.refill
    if refill and not can_refill(method):
        raise ConfigError(f"refill: method {res.run.method!r} decodes through another backend here; set refill=false")
    examples = select_examples(task, res.run.split, res.run.offset, res.run.limit)
    check_context(method, task, examples, res.generation.max_new_tokens)
    warning = warn_untrained(method, res.run.weights) if built else None
    with first_write(out, "config.yaml"):
        save_config(out, res)  # the first write: settings, model, weights and data are all checked by now
        if n == 1:
            metrics = evaluate(method, task, examples, res.generation, res.run.seeds, out, res.run.batch_size,
                               res.run.progress, refill=refill)
            return record_warnings(out, metrics, [warning] if warning else [])
        return evaluate_sharded(method, task, examples, res.generation, res.run.seeds, out, n, mine,
                                res.run.batch_size, res.run.progress, refill=refill)


def training_examples(res: Resolved, task: Task) -> list[Example]:
    """What `latentcot train` trains on: the task's training split, cut to `train_limit` (DataError if none)."""
    split = task.train_split
    if split is None:
        raise DataError(f"task {task.name} has no training split: train on a task that has one (see `latentcot ls tasks`)")
    examples = task.load(split)
    if res.train.train_limit:
        examples = examples[: res.train.train_limit]
    if not examples:
        raise DataError(f"task {task.name} split {split} has no examples to train on")
    return examples


def train_run(res: Resolved, method: Method | None = None, task: Task | None = None) -> dict[str, Any]:
    """`latentcot train`: trains on the task's train split, resuming from the output directory's checkpoint."""
    import torch

    out = res.out_dir
    preflight(res, out)
    check_resume(out, res, "train_config.yaml")
    torch.manual_seed(res.run.seeds[0])
    if method is None or task is None:
        method, task = build(res)
    if not method.trains:
        raise ConfigError(f"method {method.name!r} is training-free: use `latentcot eval`")
    examples = training_examples(res, task)
    method.check_train_examples(examples, task)
    train_cfg = method.train_config(res.train)  # a method may set (and refuse) batching: before anything is written
    from latentcot.training.checkpoint import check_checkpoint

    check_checkpoint(out / "checkpoint")
    with first_write(out, "train_config.yaml"):
        save_config(out, res, "train_config.yaml")  # the first write: settings, model and data are checked by now
        return _train(res, method, task, examples, train_cfg, out)


def _train(res: Resolved, method: Method, task: Task, examples: list[Example], train_cfg, out: Path) -> dict[str, Any]:
    from latentcot.training.loop import train

    evaluate_fn = None
    if res.run.eval_limit:
        from latentcot.eval.runner import evaluate

        eval_split = "valid" if "valid" in task.splits else task.default_split
        held = select_examples(task, eval_split, 0, res.run.eval_limit)

        def evaluate_fn(step: int) -> dict[str, Any]:
            m = evaluate(method, task, held, GenerationConfig(max_new_tokens=res.generation.max_new_tokens), [0], out / f"eval_step{step}", res.run.batch_size, False)
            return {k: m[k]["mean"] for k in ("accuracy_strict", "accuracy_flexible")}

    summary = train(method, task, examples, train_cfg, out, res.run.seeds[0], evaluate_fn, res.run.progress)
    if not summary.get("stopped_early"):
        method.finish_training(out)
    return summary
