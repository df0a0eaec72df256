"""Reading benchmark files: one base class for every file-backed task, with the checks users rely on.

- an unknown split -> ConfigError listing the splits;
- missing files -> DataError listing them and where they come from (the data README's origin column);
- a malformed row -> DataError naming the file and the line (JSONL/text) or row (JSON list, XML), unless
  `skip_bad_rows` is set, then the row is skipped, counted, and a warning logged;
- a row count other than the data README's -> DataError naming the file, the expected and the actual count.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentcot.errors import ConfigError, DataError, LatentCotError
from latentcot.tasks.answers import flexible_number, parse_number, same_number, strict_number
from latentcot.tasks.base import Example, Extracted, MissingDataError, Task, resolve_data_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One raw record and where it came from, for error messages."""

    data: Any
    where: str  # "line 12" or "row 12"
    index: int  # 0-based position in the source


def read_jsonl(path: Path) -> Iterator[Row | DataError]:
    """Rows of a JSONL file; a line that is not a JSON object yields a DataError in its place."""
    with path.open(encoding="utf-8") as f:
        index = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                yield Row(data, f"line {lineno}", index)
            except ValueError as e:
                yield DataError(
                    f"{path}: line {lineno} is malformed ({str(e).splitlines()[0]}); "
                    "fix the file or set task.skip_bad_rows=true"
                )
            index += 1


def read_json(path: Path, key: str | None = None) -> list[Row]:
    """Rows of a JSON list file (or of the list under `key`); an unreadable file is a DataError with its line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON at line {e.lineno} ({e.msg}); restore the original file") from None
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    if not isinstance(data, list):
        where = f"a list under {key!r}" if key else "a JSON list"
        raise DataError(f"{path}: expected {where}; restore the original file")
    return [Row(d, f"row {i + 1}", i) for i, d in enumerate(data)]


def read_lines(path: Path) -> list[Row]:
    """Non-empty lines of a text file, with their line numbers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, index = [], 0
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            rows.append(Row(line, f"line {lineno}", index))
            index += 1
    return rows


class FileTask(Task):
    """A task read from files under `<data_dir>/<folder>` (or from the HF Hub with `source="hub"`).

    Subclasses set `folder`, `origin`, `files` (split -> file name), `counts` (split -> documented rows),
    and implement `rows(split, path)` (raw records) and `make(row, split)` (one Example; raising KeyError,
    ValueError, TypeError or IndexError for a malformed row).
    """

    folder: str = ""
    origin: str = ""
    files: dict[str, str] = {}
    counts: dict[str, int] = {}
    numeric_gold: bool = True  # the default comparison reads gold answers as numbers; check_example enforces it

    # ---- extraction defaults: numeric answers
    def extract(self, text: str) -> Extracted:
        return Extracted(strict=strict_number(text), flexible=flexible_number(text))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return same_number(pred, gold)

    # ---- loading
    def check_split(self, split: str | None) -> str:
        split = split or self.default_split
        if split not in self.splits:
            raise ConfigError(f"task {self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")
        return split

    def data_path(self, *names: str) -> Path:
        """`<data_dir>/<folder>`, after checking that `names` exist there."""
        folder = resolve_data_dir(self.cfg.data_dir) / self.folder
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise MissingDataError(
                f"task {self.name}: missing {', '.join(missing)} in {folder}; get them from {self.origin} "
                f"(see the data README), or set task.source=hub"
            )
        return folder

    def load(self, split: str | None = None) -> list[Example]:
        split = self.check_split(split)
        if self.cfg.source == "auto":
            try:
                return self.load_local(split)
            except MissingDataError as local:  # no local files: the Hub, and one line naming both when neither works
                from latentcot.tasks.hub import HUB, hub_rows, hub_unreachable

                if split not in HUB.get(self.name, {}):
                    raise
                try:
                    why = hub_unreachable()
                    if why:
                        raise DataError(f"the HF Hub is not reachable: {why}")
                    rows = hub_rows(self.name, split)
                except LatentCotError as hub:
                    raise DataError(
                        f"task {self.name} split {split}: no local files ({local}) and no Hub copy ({hub}): pass "
                        f"--data-dir DIR (or set LATENTCOT_DATA) with the {self.origin} files, or connect to the network"
                    ) from None
                log.info("task %s: no local files, read split %s from the HF Hub", self.name, split)
                return self.build(rows, split, f"hub dataset for {self.name}/{split}")
        if self.cfg.source == "hub":
            from latentcot.tasks.hub import hub_rows

            return self.build(hub_rows(self.name, split), split, f"hub dataset for {self.name}/{split}")
        return self.load_local(split)

    def load_local(self, split: str) -> list[Example]:
        path = self.data_path(self.files[split]) / self.files[split]
        return self.build(self.rows(split, path), split, str(path), expected=self.counts.get(split))

    def rows(self, split: str, path: Path) -> Iterator[Row | DataError] | list[Row]:
        raise NotImplementedError

    def make(self, row: Row, split: str) -> Example:
        raise NotImplementedError

    def check_example(self, ex: Example) -> Example:
        """Refuses a row with an empty question, or a gold answer this task's comparison cannot read
        (numeric tasks: a gold answer that is not a number, e.g. "eighteen")."""
        if not str(ex.question).strip():
            raise ValueError("empty question")
        if not str(ex.answer).strip():
            raise ValueError("empty gold answer")
        if self.numeric_gold and type(self).is_equivalent is FileTask.is_equivalent and parse_number(ex.answer) is None:
            raise ValueError(f"gold answer {ex.answer!r} is not a number")
        return ex

    def build(
        self,
        rows: Iterator[Row | DataError] | list[Row],
        split: str,
        source: str,
        expected: int | None = None,
        make: Callable[[Row, str], Example] | None = None,
    ) -> list[Example]:
        """Examples from raw rows, with the bad-row and row-count checks of the module docstring."""
        make = make or self.make
        out: list[Example] = []
        n_rows = n_bad = 0
        for row in rows:
            n_rows += 1
            try:
                if isinstance(row, DataError):
                    raise row
                try:
                    out.append(self.check_example(make(row, split)))
                except (KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
                    raise DataError(
                        f"{source}: {row.where} is malformed ({type(e).__name__}: {e}); "
                        "fix the file or set task.skip_bad_rows=true"
                    ) from None
            except DataError:
                if not self.cfg.skip_bad_rows:
                    raise
                n_bad += 1
        if n_bad:
            log.warning("%s: skipped %d malformed row(s) of %d (skip_bad_rows=true)", source, n_bad, n_rows)
        if expected is not None and n_rows != expected:
            raise DataError(
                f"{source}: expected {expected} rows (data README), got {n_rows}; restore the original file"
            )
        if not out:
            raise DataError(f"{source}: no usable rows for {self.name}/{split}")
        return out
