"""`latentcot.heap`: the process setting that keeps freed heap memory (glibc's mallopt), taken by the command and the
benches, never on import, and left off where the user says so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from latentcot import heap

_PROBE = """
import ctypes, sys
from latentcot import heap
libc = heap._glibc()
if libc is None:
    print("no-glibc"); sys.exit(0)
set_now = heap.keep_freed_memory()
# a freed 8 MiB block (above glibc's default threshold) comes from the heap, not a mapping of its own, and stays
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]
if not hasattr(libc, "mallinfo2"):  # glibc before 2.33
    print("no-glibc"); sys.exit(0)
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
p = libc.malloc(8 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(p)
print(set_now, mapped, libc.mallinfo2().fordblks >= (8 << 20))
"""


def _probe(**env) -> list[str]:
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("LATENTCOT_KEEP_HEAP", *heap._USER_VARS)}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env={**base, **env},
                         check=True)
    return out.stdout.split()


def test_keep_freed_memory_serves_big_blocks_from_the_heap_and_keeps_them():
    got = _probe()
    if got == ["no-glibc"]:
        pytest.skip("not glibc (2.33 or later): nothing to measure here")
    assert got == ["True", "0", "True"]  # set; no mapping for the 8 MiB block; freed, it stays in the heap


def test_the_user_can_turn_it_off_or_set_glibcs_own_variables():
    if _probe() == ["no-glibc"]:
        pytest.skip("not glibc (2.33 or later)")
    assert _probe(LATENTCOT_KEEP_HEAP="0")[:2] == ["False", "1"]  # glibc's default: the block got its own mapping
    assert _probe(MALLOC_MMAP_THRESHOLD_="131072")[0] == "False"  # the user's own setting stands


def test_importing_the_library_leaves_the_process_alone():
    code = ("import latentcot.pipeline, latentcot.decoding.engine; from latentcot import heap; "
            "print(heap._apply.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"]


def test_the_command_and_the_scripts_take_it(monkeypatch):
    """`latentcot` (cli main) and `run_script` (benches, recipes) call it at their start."""
    from latentcot.cli import common
    from latentcot.cli.main import main

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["ls", "methods"]) == 0 and calls == [1]
    monkeypatch.setattr(sys, "argv", ["bench.py"])
    with pytest.raises(SystemExit) as done:
        common.run_script(lambda: None)
    assert done.value.code == 0 and calls == [1, 1]
