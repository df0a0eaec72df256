"""Crash-safe file output: every file a run writes goes through here.

Three operations cover every write of a run:
    write_bytes / write_text / write_json   replace a whole file: write a temporary sibling, fsync, rename
    append_lines                            add complete lines to a JSONL file and fsync (samples, logs);
                                            a kill can tear at most the last line, which readers set aside
    publish_dir / remove_tree               publish a fully written directory with one rename; remove one
A kill at any moment therefore leaves either the old file or the new one, never a mix, plus at most a
temporary (`*.tmp*`) that the next run removes.

All low-level calls go through the few `_`-prefixed primitives below, so a test can make any one of them fail
(a fault injected at each write, fsync, rename and unlink) and check that every resume ends where an
uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp"


# ---- primitives (the only places that touch the file system; tests wrap them to inject faults) ----


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _replace(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _unlink(path: Path) -> None:
    os.unlink(path)


def _rmdir(path: Path) -> None:
    os.rmdir(path)


def fsync_dir(path: Path) -> None:
    """Makes a rename or unlink inside `path` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- whole files ----


def tmp_name(path: Path) -> Path:
    """The temporary sibling a write of `path` goes through (removed by `clean_temporaries`)."""
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replaces `path` with `data` atomically: the file holds either its old content or `data`."""
    path = Path(path)
    tmp = tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write(fd, data)
            _fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, path)
    except BaseException:
        try:
            _unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    import yaml

    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Appends complete lines (each without its newline) in one write and fsyncs them."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write(fd, data)
        _fsync(fd)
    finally:
        os.close(fd)


def append_json(path: str | Path, rows: Iterable[Any]) -> None:
    append_lines(path, (json.dumps(r, ensure_ascii=False) for r in rows))


# ---- directories ----


def remove_tree(path: Path) -> None:
    """Deletes a directory tree file by file (a kill midway leaves a partial tree that the next run removes)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        _unlink(path)
        return
    for child in sorted(path.iterdir()):
        remove_tree(child)
    _rmdir(path)


def publish_dir(tmp: Path, final: Path) -> None:
    """Makes the fully written directory `tmp` visible as `final` with one rename (`final` must not exist)."""
    for f in tmp.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                _fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(tmp)
    _replace(tmp, final)
    fsync_dir(final.parent)


def clean_temporaries(directory: Path) -> list[Path]:
    """Removes the temporaries (`name.tmpPID`) that a killed write left in `directory`; returns them."""
    removed = []
    if not Path(directory).is_dir():
        return removed
    for p in Path(directory).iterdir():
        stem, mark, pid = p.name.rpartition(TMP_MARK)
        if mark and stem and pid.isdigit() and p.is_file():
            _unlink(p)
            removed.append(p)
    return removed


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Renders a matplotlib figure to PNG bytes and writes them atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_bytes(path, buf.getvalue())
