"""Writer lock: one writer, a clear error naming the holder, waiting, killed holders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ftspl
from ftspl.engine.errors import IndexLockedError
from ftspl.engine.index.store.lock import WriterLock, read_lock_pid

REPO = Path(ftspl.__file__).resolve().parents[1]

#: Holds the lock until a line arrives on stdin (or stdin closes): the test decides when.
HOLDER = """
import sys
from ftspl.engine.index.store.lock import WriterLock
lock = WriterLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""


def spawn_holder(lock_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_in_same_process_is_refused(tmp_path) -> None:
    path = tmp_path / "idx" / "write.lock"
    with WriterLock(path) as lock:
        assert lock.locked and read_lock_pid(path) == os.getpid()
        with pytest.raises(IndexLockedError) as err:
            WriterLock(path).acquire()
        assert err.value.pid == os.getpid()
    assert not lock.locked and read_lock_pid(path) is None  # PID cleared on release
    with WriterLock(path):  # free again
        pass


def test_lock_held_by_another_process_names_its_pid_then_frees_on_sigkill(tmp_path) -> None:
    path = tmp_path / "write.lock"
    proc = spawn_holder(path)
    try:
        with pytest.raises(IndexLockedError, match=f"locked by PID {proc.pid}") as err:
            WriterLock(path).acquire()
        assert err.value.pid == proc.pid and "--wait" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with WriterLock(path) as lock:  # the kernel released the dead holder's lock
        assert lock.locked and read_lock_pid(path) == os.getpid()


def test_wait_times_out_with_the_holders_pid(tmp_path) -> None:
    path = tmp_path / "write.lock"
    proc = spawn_holder(path)
    try:
        start = time.monotonic()
        with pytest.raises(IndexLockedError) as err:
            WriterLock(path, wait=True, timeout=0.3).acquire()
        assert time.monotonic() - start >= 0.3 and err.value.pid == proc.pid  # it did wait its timeout
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_wait_acquires_once_the_holder_finishes(tmp_path) -> None:
    path = tmp_path / "write.lock"
    proc = spawn_holder(path)
    try:
        waiter = WriterLock(path, wait=True, timeout=60)
        acquired = threading.Event()

        def take() -> None:
            waiter.acquire()
            acquired.set()

        t = threading.Thread(target=take)
        t.start()
        assert not acquired.wait(0.2)  # blocked while the holder holds it
        proc.stdin.write("release\n")
        proc.stdin.flush()
        t.join(timeout=60)
        assert acquired.is_set() and waiter.locked
        assert proc.wait(timeout=10) == 0
        waiter.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_lock_is_not_reentrant_and_release_is_idempotent(tmp_path) -> None:
    lock = WriterLock(tmp_path / "w.lock")
    lock.acquire()
    with pytest.raises(RuntimeError, match="re-entrant"):
        lock.acquire()
    lock.release()
    lock.release()
    with pytest.raises(ValueError):
        WriterLock(tmp_path / "w.lock", timeout=-1)
