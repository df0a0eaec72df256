"""Benchmark loaders on the real files, their error messages, asdiv_aug, and the HF Hub path (local stand-in)."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from latentcot.errors import ConfigError, DataError
from latentcot.tasks import TASKS, get_task, task_class
from latentcot.tasks.augment import evaluate, tokenize
from latentcot.tasks.choice import ChoiceTask
from latentcot.tasks.math_word import Gsm8k

DATA = Path(os.environ.get("LATENTCOT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"benchmark data not found at {DATA} (set LATENTCOT_DATA to the data README's folder)"
)

# task -> split -> rows documented in the data README (strategyqa: its fixed 80/20 split of 2290)
COUNTS = {
    "gsm8k": {"train": 7473, "test": 1319, "test_socratic": 1319},
    "gsm8k_aug": {"train": 7473, "valid": 500, "test": 1319},
    "asdiv": {"test": 2305},
    "svamp": {"test": 1000},
    "multiarith": {"test": 600},
    "addsub": {"test": 395},
    "singleeq": {"test": 508},
    "gsm_hard": {"test": 1319},
    "aqua": {"dev": 254, "test": 254},
    "strategyqa": {"train": 1832, "test": 458},
    "date_understanding": {"test": 369},
    "commonsenseqa": {"train": 9741, "dev": 1221},
    "math500": {"test": 500},
    "prosqa": {"valid": 300, "test": 500},
}


def test_every_benchmark_is_registered() -> None:
    task_class("gsm8k")  # imports every task module
    assert set(COUNTS) | {"asdiv_aug"} <= set(TASKS.names())


@needs_data
@pytest.mark.parametrize("name,split", [(n, s) for n, splits in COUNTS.items() for s in splits])
def test_loader_counts_and_targets(name: str, split: str) -> None:
    task = get_task(name, data_dir=str(DATA))
    examples = task.load(split)
    assert len(examples) == COUNTS[name][split]
    assert len({ex.id for ex in examples}) == len(examples)
    assert [ex.id for ex in task.load(split)][:20] == [ex.id for ex in examples][:20]  # stable ids
    for ex in examples[:5]:
        assert ex.question and ex.answer
        if isinstance(task, ChoiceTask):
            assert "(A) " in task.prompt(ex) and "The answer is (X)" in task.prompt(ex)
        scored = task.score(ex, task.target(ex))  # the SFT target is read back as correct by both extractors
        assert scored["correct_strict"] and scored["correct_flexible"], (ex, scored)


@needs_data
def test_example_shapes() -> None:
    gsm = get_task("gsm8k", data_dir=str(DATA)).load("train")[0]
    assert gsm.answer == "72" and "<<" not in gsm.rationale and len(gsm.steps) == 2
    aug = get_task("gsm8k_aug", data_dir=str(DATA)).load("train")[0]
    assert aug.steps == ("<<48/2=24>>", "<<48+24=72>>") and aug.rationale == "<<48/2=24>> <<48+24=72>>"
    assert get_task("aqua", data_dir=str(DATA)).load("dev")[0].meta["options"][0] == "32400"
    dates = get_task("date_understanding", data_dir=str(DATA)).load()
    date = dates[0]
    assert date.meta["options"][ord(date.answer) - ord("A")] == "05/01/2021" and len(date.meta["options"]) == 6
    # the file puts the correct option first almost always; shuffled, no letter may dominate the gold answers
    from collections import Counter

    assert max(Counter(d.answer for d in dates).values()) < 0.3 * len(dates)
    assert [d.answer for d in dates] == [d.answer for d in get_task("date_understanding", data_dir=str(DATA)).load()]
    pros = get_task("prosqa", data_dir=str(DATA)).load("valid")[0]
    assert pros.answer == "lempus" and pros.steps[0] == "Tom is a terpus."
    prosqa_out = "Tom is a terpus. Every terpus is a brimpus. ### Tom is a lempus."
    assert get_task("prosqa").extract(prosqa_out).strict == "lempus"
    sqa = get_task("strategyqa", data_dir=str(DATA))
    train, test = sqa.load("train"), sqa.load("test")
    assert not {e.id for e in train} & {e.id for e in test} and {e.answer for e in test} == {"yes", "no"}


@needs_data
def test_data_dir_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTCOT_DATA", str(DATA))
    assert len(get_task("addsub").load()) == 395


# ----------------------------------------------------------------------------- asdiv_aug


@pytest.fixture(scope="module")
def asdiv_aug() -> dict:
    if not DATA.is_dir():
        pytest.skip(f"benchmark data not found at {DATA}")
    task = get_task("asdiv_aug", data_dir=str(DATA))
    out = {}
    for split in ("train", "test"):
        out[split] = task.load(split)
        out[split + "_stats"] = dict(task.last_stats)
    return out


def test_asdiv_aug_counts(asdiv_aug: dict) -> None:
    stats = [asdiv_aug["train_stats"], asdiv_aug["test_stats"]]
    assert sum(s["problems"] for s in stats) == 2305
    for split, s in zip(("train", "test"), stats):
        assert s["rows"] == 5 * s["augmented"] + s["kept_once"] == len(asdiv_aug[split])
    assert sum(s["augmented"] for s in stats) > 1200  # most formulas are plain arithmetic
    assert stats[1]["problems"] == round(0.2 * 2305)
    source = {split: {ex.id.split("-aug")[0] for ex in asdiv_aug[split]} for split in ("train", "test")}
    assert not source["train"] & source["test"]  # all copies of a problem in one split


def test_asdiv_aug_answers_recompute(asdiv_aug: dict) -> None:
    copies = [ex for ex in asdiv_aug["test"] if "-aug" in ex.id]
    assert copies
    for ex in copies:
        lhs, rhs = ex.rationale.split("=")
        assert evaluate(tokenize(lhs)) == Fraction(rhs) and float(Fraction(rhs)) == float(ex.answer)


def test_asdiv_aug_is_deterministic(asdiv_aug: dict) -> None:
    again = get_task("asdiv_aug", data_dir=str(DATA)).load("test")
    assert again == asdiv_aug["test"]
    other = get_task("asdiv_aug", data_dir=str(DATA), seed=1).load("test")
    assert [e.question for e in other] != [e.question for e in asdiv_aug["test"]]


# ----------------------------------------------------------------------------- errors


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = json.dumps({"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"})


def test_bad_row_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(Gsm8k.counts, "train", 4)
    path = _write(tmp_path / "gsm8k" / "train.jsonl", f"{GOOD}\n{{not json\n{GOOD}\n" + '{"question": "q"}\n')
    with pytest.raises(DataError, match=rf"{path}: line 2 is malformed.*skip_bad_rows"):
        get_task("gsm8k", data_dir=str(tmp_path)).load("train")


def test_skip_bad_rows_counts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setitem(Gsm8k.counts, "train", 4)
    _write(tmp_path / "gsm8k" / "train.jsonl", f"{GOOD}\n{{not json\n{GOOD}\n" + '{"question": "q"}\n')
    examples = get_task("gsm8k", data_dir=str(tmp_path), skip_bad_rows=True).load("train")
    assert [ex.answer for ex in examples] == ["5", "5"]
    assert "skipped 2 malformed row(s) of 4" in caplog.text


def test_bad_json_list_row(tmp_path: Path) -> None:
    rows = [{"question": "Is Tom a wumpus or a zumpus?", "answer": "Tom is a wumpus.", "steps": []}] * 299
    _write(tmp_path / "prosqa" / "valid.json", json.dumps(rows + [{"question": "q"}]))
    with pytest.raises(DataError, match=r"valid.json: row 300 is malformed"):
        get_task("prosqa", data_dir=str(tmp_path)).load("valid")
    _write(tmp_path / "prosqa" / "valid.json", "[{")
    with pytest.raises(DataError, match=r"valid.json: not valid JSON at line 1"):
        get_task("prosqa", data_dir=str(tmp_path)).load("valid")


def test_count_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path / "gsm8k" / "test.jsonl", f"{GOOD}\n{GOOD}\n")
    with pytest.raises(DataError, match=rf"{path}: expected 1319 rows \(data README\), got 2"):
        get_task("gsm8k", data_dir=str(tmp_path)).load("test")


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing test.jsonl in .*get them from openai/grade-school-math"):
        get_task("gsm8k", data_dir=str(tmp_path)).load()
    with pytest.raises(DataError, match=r"missing ASDiv.xml"):
        get_task("asdiv_aug", data_dir=str(tmp_path)).load("train")


def test_unknown_split() -> None:
    with pytest.raises(ConfigError, match=r"no split 'validation': choose one of train, test, test_socratic"):
        get_task("gsm8k").load("validation")


# ----------------------------------------------------------------------------- HF Hub path, offline


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list:
    datasets = pytest.importorskip("datasets")
    calls: list = []
    tables = {
        "openai/gsm8k": [json.loads(GOOD)],
        "tau/commonsense_qa": [
            {"id": "q1", "question": "Where is a bank?", "question_concept": "bank", "answerKey": "C",
             "choices": {"label": list("ABCDE"), "text": ["sea", "sky", "town", "moon", "void"]}}
        ],
        "HuggingFaceH4/MATH-500": [
            {"problem": "What is 1/2+1/4?", "solution": "...", "answer": "\\frac{3}{4}", "subject": "Algebra",
             "level": 1, "unique_id": "test/algebra/1.json"}
        ],
        "tasksource/bigbench": [
            {"inputs": f"Q{i}?", "targets": ["Yes. Because."], "multiple_choice_targets": ["Yes", "No"],
             "multiple_choice_scores": [1, 0], "idx": i} for i in range(10)
        ],
        "EleutherAI/asdiv": [
            {"body": "Tom has 12 apples and buys 7 more.", "question": "How many apples?", "solution_type": "Addition",
             "answer": "19 (apples)", "formula": "12+7=19"}
        ],
    }  # fmt: skip

    def load_dataset(path: str, name: str | None = None, split: str | None = None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(tables[path])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_source(fake_hub: list) -> None:
    ex = get_task("gsm8k", source="hub").load("train")[0]
    assert (ex.answer, ex.rationale) == ("5", "2+3=5")
    assert fake_hub[-1] == ("openai/gsm8k", "main", "train")
    csqa = get_task("commonsenseqa", source="hub").load("dev")[0]
    assert csqa.answer == "C" and csqa.meta["options"][2] == "town" and fake_hub[-1][2] == "validation"
    m = get_task("math500", source="hub").load()[0]
    assert m.id == "test/algebra/1.json" and get_task("math500").is_equivalent("0.75", m.answer)
    sqa = get_task("strategyqa", source="hub").load("test")
    assert len(sqa) == 2 and sqa[0].answer == "yes" and sqa[0].rationale == "Because."
    aug = get_task("asdiv_aug", source="hub", test_fraction=0.0).load("train")
    assert len(aug) == 5 and all(float(e.answer) > 0 for e in aug)


def test_hub_errors(fake_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="prosqa split test has no HF Hub source"):
        get_task("prosqa", source="hub").load()
    import datasets

    def offline(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load openai/gsm8k \(main\) split test .*no network.*source=local"):
        get_task("gsm8k", source="hub").load()
