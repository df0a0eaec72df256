"""task.source=auto (the default): local files when they are there, else the HF Hub, else one line naming both."""

from __future__ import annotations

import pytest

import latentcot.tasks.hub as hub
from latentcot.cli.main import main
from latentcot.errors import DataError
from latentcot.tasks import get_task
from latentcot.tasks.datafiles import Row


def test_auto_is_the_default_and_reads_local_files(shared_data, monkeypatch):
    monkeypatch.setattr(hub, "hub_rows", lambda *a: pytest.fail("the Hub was asked although the files are here"))
    task = get_task("gsm8k", data_dir=str(shared_data))
    assert task.cfg.source == "auto"
    assert len(task.load("test")) == 1319


def test_auto_falls_back_to_the_hub(tmp_path, monkeypatch):
    rows = [Row({"question": "What is 2+3?", "answer": "2+3=5\n#### 5"}, "row 1", 0)]
    asked = []
    monkeypatch.setattr(hub, "hub_unreachable", lambda timeout=3.0: None)
    monkeypatch.setattr(hub, "hub_rows", lambda task, split: asked.append((task, split)) or rows)
    (ex,) = get_task("gsm8k", data_dir=str(tmp_path)).load("test")  # an empty data directory
    assert asked == [("gsm8k", "test")] and ex.question == "What is 2+3?" and ex.answer == "5"


def test_auto_without_files_or_network_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="no local files .* and no Hub copy .*HF_HUB_OFFLINE is set.*--data-dir"):
        get_task("gsm8k", data_dir=str(tmp_path / "nowhere")).load()
    src = tmp_path / "o.jsonl"
    src.write_text('{"id": "test-0", "output": "The answer is 3"}\n')
    rc = main(["score", "--task", "svamp", str(src), "--data-dir", str(tmp_path), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "svamp" in err[0] and "connect to the network" in err[0]
    # a task without a Hub copy keeps the local error, and source=local never asks the Hub
    with pytest.raises(DataError, match="missing"):
        get_task("prosqa", data_dir=str(tmp_path)).load()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_rows", lambda *a: pytest.fail("source=local asked the Hub"))
    with pytest.raises(DataError, match="missing"):
        get_task("gsm8k", data_dir=str(tmp_path), source="local").load()
