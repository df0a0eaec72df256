"""The same benchmarks from the HF Hub through `datasets` (`task.source=hub`), for users with a network.

Each (task, split) maps to a documented dataset id, config and split; each hub row is converted to the row
format of the local file, so the task's own parser builds the Example and both sources give the same shape.
Hub copies are not always the same rows as the local files (noted below), so the local row counts are not
checked for them. `datasets` is imported only when a hub task is loaded.

| task | dataset (config) | splits |
|---|---|---|
| gsm8k | openai/gsm8k (main; socratic for test_socratic) | train, test |
| gsm8k_aug | zen-E/GSM8k-Aug (the full 385k iCoT train set) | train, validation, test |
| asdiv, asdiv_aug | EleutherAI/asdiv (asdiv) | validation (all 2305) |
| svamp | ChilleD/SVAMP | train+test (all 1000) |
| multiarith | ChilleD/MultiArith | train+test (all 600) |
| addsub, singleeq | allenai/lila (addsub, singleq) | train+validation+test |
| gsm_hard | reasoning-machines/gsm-hard | train (1319) |
| aqua | deepmind/aqua_rat (raw) | validation, test |
| strategyqa, date_understanding | tasksource/bigbench (strategyqa, date_understanding) | train+validation |
| commonsenseqa | tau/commonsense_qa | train, validation |
| math500 | HuggingFaceH4/MATH-500 | test |
| prosqa | none on the Hub: use the local files (facebookresearch/coconut: data/) | |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latentcot.errors import ConfigError, DataError
from latentcot.tasks.datafiles import Row

Convert = Callable[[dict[str, Any], int], Any]


def _same(row: dict[str, Any], i: int) -> dict[str, Any]:
    return row


def _gsm8k_aug(row: dict[str, Any], i: int) -> str:
    return f"{row['question']}||{row['cot']} #### {row['answer']}"


def _asdiv(row: dict[str, Any], i: int) -> dict[str, Any]:
    return {
        "ID": f"nluds-{i + 1:04d}",
        "Body": row["body"],
        "Question": row["question"],
        "Solution-Type": row.get("solution_type", ""),
        "Answer": row["answer"],
        "Formula": row.get("formula", ""),
    }


def _mawps(question: str, answer: str) -> Convert:
    return lambda row, i: {"iIndex": i, "sQuestion": row[question], "lSolutions": [row[answer]], "lEquations": []}


def _bigbench(row: dict[str, Any], i: int) -> dict[str, Any]:
    targets = row.get("targets") or [""]
    scores = dict(zip(row["multiple_choice_targets"], row["multiple_choice_scores"]))
    return {"input": row["inputs"], "target_scores": scores, "target": targets[0]}


def _commonsenseqa(row: dict[str, Any], i: int) -> dict[str, Any]:
    choices = [{"label": lab, "text": t} for lab, t in zip(row["choices"]["label"], row["choices"]["text"])]
    return {"id": row["id"], "answerKey": row["answerKey"], "question": {"stem": row["question"], "choices": choices}}


def _math500(row: dict[str, Any], i: int) -> dict[str, Any]:
    return {
        "prompt": [{"from": "user", "value": row["problem"]}],
        "final_answer": row["answer"],
        **{k: row[k] for k in ("solution", "subject", "level", "unique_id") if k in row},
    }


# task -> split -> (dataset id, config, hub split, row converter)
HUB: dict[str, dict[str, tuple[str, str | None, str, Convert]]] = {
    "gsm8k": {
        "train": ("openai/gsm8k", "main", "train", _same),
        "test": ("openai/gsm8k", "main", "test", _same),
        "test_socratic": ("openai/gsm8k", "socratic", "test", _same),
    },
    "gsm8k_aug": {
        "train": ("zen-E/GSM8k-Aug", None, "train", _gsm8k_aug),
        "valid": ("zen-E/GSM8k-Aug", None, "validation", _gsm8k_aug),
        "test": ("zen-E/GSM8k-Aug", None, "test", _gsm8k_aug),
    },
    "asdiv": {"test": ("EleutherAI/asdiv", "asdiv", "validation", _asdiv)},
    "asdiv_aug": {s: ("EleutherAI/asdiv", "asdiv", "validation", _asdiv) for s in ("train", "test")},
    "svamp": {"test": ("ChilleD/SVAMP", None, "train+test", _same)},
    "multiarith": {"test": ("ChilleD/MultiArith", None, "train+test", _mawps("question", "final_ans"))},
    "addsub": {"test": ("allenai/lila", "addsub", "train+validation+test", _mawps("input", "output_answer"))},
    "singleeq": {"test": ("allenai/lila", "singleq", "train+validation+test", _mawps("input", "output_answer"))},
    "gsm_hard": {"test": ("reasoning-machines/gsm-hard", None, "train", _same)},
    "aqua": {
        "dev": ("deepmind/aqua_rat", "raw", "validation", _same),
        "test": ("deepmind/aqua_rat", "raw", "test", _same),
    },
    "strategyqa": {s: ("tasksource/bigbench", "strategyqa", "train+validation", _bigbench) for s in ("train", "test")},
    "date_understanding": {"test": ("tasksource/bigbench", "date_understanding", "train+validation", _bigbench)},
    "commonsenseqa": {
        "train": ("tau/commonsense_qa", None, "train", _commonsenseqa),
        "dev": ("tau/commonsense_qa", None, "validation", _commonsenseqa),
    },
    "math500": {"test": ("HuggingFaceH4/MATH-500", None, "test", _math500)},
}


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the HF Hub cannot be reached (offline mode set, or no connection within `timeout` s); None if it can.

    A quick check before `datasets` tries, so that a machine without a network gets one line at once instead of
    a minute of retries.
    """
    import os
    import socket
    from urllib.parse import urlparse

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot connect to {host}: {getattr(e, 'strerror', None) or e}"
    return None


def hub_rows(task: str, split: str) -> list[Row | DataError]:
    """The rows of `task`/`split` from the HF Hub, converted to the local file's row format."""
    if task not in HUB or split not in HUB[task]:
        raise DataError(f"task {task} split {split} has no HF Hub source; use task.source=local with the data files")
    try:
        import datasets
    except ImportError:
        raise ConfigError("task.source=hub needs the `datasets` package: pip install 'latentcot[hub]'") from None
    dataset_id, config, hub_split, convert = HUB[task][split]
    name = f"{dataset_id}" + (f" ({config})" if config else "")
    try:
        ds = datasets.load_dataset(dataset_id, config, split=hub_split)
    except Exception as e:  # network, auth, missing dataset: one line, with the way out
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"cannot load {name} split {hub_split} from the HF Hub ({msg}); use task.source=local"
        ) from None
    rows: list[Row | DataError] = []
    for i, r in enumerate(ds):
        try:
            data = convert(dict(r), i)
        except (KeyError, TypeError, ValueError) as e:
            data = DataError(f"hub dataset {name}: row {i + 1} is malformed ({type(e).__name__}: {e})")
        rows.append(data if isinstance(data, DataError) else Row(data, f"row {i + 1}", i))
    return rows
