"""Symbolic answer equivalence (math500) with math-verify, bounded in time.

math-verify guards its parsing and comparison with `signal.alarm`, which only works in the main thread, and a
thread-based deadline cannot stop it either: SymPy holds the GIL while it expands `2^{2^{2^{30}}}`. So every
comparison runs in one long-lived worker process (plain `python -c`, no multiprocessing, so a user's script is
never re-imported) with math-verify's own timeouts disabled (`parsing_timeout=None`, `timeout_seconds=None`).
The parent waits at most `timeout` seconds for the answer; on a timeout it kills the worker (a fresh one starts
on the next call) and counts the comparison as not equivalent. Inputs are capped at `MAX_ANSWER_CHARS`.
The deadline uses `select` on the worker's pipe (POSIX).
Cheap cases (equal strings, two plain numbers) never reach the worker.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from functools import lru_cache

from latentcot.tasks.answers import numbers_equal, parse_number

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
DEFAULT_TIMEOUT_S = 5.0
_STARTUP_TIMEOUT_S = 120.0

_SERVER = r"""
import json, logging, sys, warnings
out = sys.stdout
sys.stdout = sys.stderr
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
from math_verify import parse, verify
out.write("ready\n"); out.flush()
for line in sys.stdin:
    try:
        req = json.loads(line)
        gold = parse("\\boxed{" + req["gold"] + "}", parsing_timeout=None)
        pred = parse("\\boxed{" + req["pred"] + "}", parsing_timeout=None)
        ok = bool(gold) and bool(pred) and verify(gold, pred, timeout_seconds=None)
        out.write("1\n" if ok else "0\n")
    except Exception:
        out.write("0\n")
    out.flush()
"""


class SymbolicWorker:
    """One math-verify worker process, restarted after a timeout or crash. Thread-safe (calls are serialised)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _readline(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
        return buf

    def _start(self) -> bool:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if self._readline(time.monotonic() + _STARTUP_TIMEOUT_S) != b"ready\n":
            log.warning("the math-verify worker did not start (is math-verify installed?)")
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def equivalent(self, pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool | None:
        """math-verify's verdict, or None when it timed out or the worker failed."""
        with self._lock:
            if (self._proc is None or self._proc.poll() is not None) and not self._start():
                return None
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps({"pred": pred, "gold": gold}) + "\n").encode())
                self._proc.stdin.flush()
            except OSError:
                self.close()
                return None
            line = self._readline(time.monotonic() + timeout)
            if line is None:
                log.warning("math-verify took over %.1fs on %r vs %r; counted as not equivalent", timeout, pred, gold)
                self.close()
                return None
            return line == b"1\n"


_WORKER = SymbolicWorker()
atexit.register(_WORKER.close)


def _squash(s: str) -> str:
    return "".join(s.split()).rstrip(".").strip("$")


@lru_cache(maxsize=65536)
def math_equal(pred: str | None, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a predicted LaTeX answer equals the gold one: string, numeric, then math-verify symbolic checks.

    Never raises and never runs longer than about `timeout` seconds.
    """
    if pred is None or not pred.strip():
        return False
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return _squash(pred) == _squash(gold)
    if _squash(pred) == _squash(gold):
        return True
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return numbers_equal(p, g)
    return bool(_WORKER.equivalent(pred, gold, timeout))
