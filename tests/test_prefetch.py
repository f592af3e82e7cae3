"""The prefetch helper: order, errors, early stop, and thread affinity of the generator."""

from __future__ import annotations

import threading

import pytest

from ftspl.engine.index.pipeline.prefetch import prefetch


def test_order_and_thread_affinity():
    seen_threads = set()
    closed = []

    def gen():
        try:
            for i in range(20):
                seen_threads.add(threading.get_ident())
                yield i
        finally:
            seen_threads.add(threading.get_ident())
            closed.append(True)

    assert list(prefetch(gen, depth=3)) == list(range(20))
    assert closed == [True]
    assert len(seen_threads) == 1 and threading.get_ident() not in seen_threads


def test_errors_reach_the_consumer():
    def gen():
        yield 1
        raise KeyError("boom")

    it = prefetch(gen)
    assert next(it) == 1
    with pytest.raises(KeyError, match="boom"):
        next(it)


def test_early_stop_closes_the_generator():
    closed = threading.Event()

    def gen():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetch(gen, depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert closed.wait(5)
