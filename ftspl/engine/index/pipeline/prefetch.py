"""Run a generator in a background thread, a few items ahead of its consumer.

Used by ``index add`` so that loading + rendering the next shapes (Python,
trimesh, Mesa) overlaps with onnxruntime encoding the current batch (which
releases the GIL). The generator is created, iterated and closed inside the
worker thread, because an OpenGL context belongs to the thread that made it.
Written by hand because it is 40 lines and the standard pools cannot pin a
generator's whole life to one thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(make: Callable[[], Iterator[T]], depth: int = 4) -> Iterator[T]:
    """Yield what ``make()`` yields, produced ahead in a thread; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        gen = make()
        try:
            for item in gen:
                if not put(item):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Raised(exc))
        finally:
            gen.close()  # runs the generator's cleanup (e.g. GL context release) in this thread
            put(_END)

    thread = threading.Thread(target=worker, name="ftspl-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
