"""A re-embed's part files: records encoded for one target model, waiting for the swap.

``<index>/reembed/`` holds ``target.json`` (the model the parts belong to) and
``part-NNNNNN.npz`` files of ``commit_every`` records each, written atomically,
so a run killed half way leaves whole parts and the next run encodes only the
shapes no part holds. Records are stored field by field (arrays and bytes as
arrays, the rest as JSON): no pickle.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ftspl.engine.errors import IndexStateError
from ftspl.engine.files import atomic_write_bytes
from ftspl.engine.index.pipeline.records import EncodedShape
from ftspl.engine.index.store.schema import ShapeRecord

log = logging.getLogger(__name__)

TARGET_FILE = "target.json"


class Parts:
    """``<index>/reembed/``: records encoded for one target model, in atomically written files."""

    def __init__(self, folder: Path, target: dict) -> None:
        self.folder, self.target = folder, target

    def open(self) -> None:
        """Keep parts made for this target; discard the folder's contents when they are another model's."""
        meta = self.folder / TARGET_FILE
        if meta.exists():
            try:
                same = json.loads(meta.read_text()) == self.target
            except (OSError, ValueError):
                same = False
            if not same:
                log.info("%s: parts of another model; starting over", self.folder)
                self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(self.target, sort_keys=True).encode())

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz")) if self.folder.is_dir() else []

    def clear(self) -> None:
        """Remove the folder and all it holds (parts, the target file, and the temporary file a
        write killed half way leaves behind)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, records: list) -> None:
        files = self.files()
        n = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        atomic_write_bytes(self.folder / f"part-{n:06d}.npz", _pack(records))

    def paths(self) -> set[str]:
        """The paths the parts hold records for (reads only each part's small JSON member)."""
        out: set[str] = set()
        for p in self.files():
            try:
                with np.load(p, allow_pickle=False) as z:
                    out.update(str(m["path"]) for m in json.loads(bytes(z["meta"]).decode()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise IndexStateError(f"{p}: unreadable re-embed part ({exc}); delete {p.parent} and run again") from None
        return out

    def records(self) -> Iterator[list[ShapeRecord]]:
        for p in self.files():
            yield _unpack(p)


def _pack(records: list) -> bytes:
    """Records -> npz bytes, field by field (arrays and bytes as arrays, the rest as JSON; no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, rec in enumerate(records):
        m: dict = {}
        for f in dataclasses.fields(rec):
            v = getattr(rec, f.name)
            if isinstance(v, np.ndarray):
                arrays[f"{i}.{f.name}"] = v
                m[f.name] = {"$": "array"}
            elif isinstance(v, (bytes, bytearray, memoryview)):
                arrays[f"{i}.{f.name}"] = np.frombuffer(bytes(v), np.uint8)
                m[f.name] = {"$": "bytes"}
            else:
                m[f.name] = str(v) if isinstance(v, Path) else v
        meta.append(m)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(path: Path) -> list[ShapeRecord]:
    known = {f.name for f in dataclasses.fields(ShapeRecord)}
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            out = []
            for i, m in enumerate(meta):
                kw = {}
                for k, v in m.items():
                    if k not in known:
                        continue
                    if isinstance(v, dict) and v.get("$") == "array":
                        v = z[f"{i}.{k}"]
                    elif isinstance(v, dict) and v.get("$") == "bytes":
                        v = z[f"{i}.{k}"].tobytes()
                    kw[k] = v
                out.append(ShapeRecord(**kw))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexStateError(f"{path}: unreadable re-embed part ({exc}); delete {path.parent} and run again") from None
    return out


class PartSink:
    """The write pipeline's sink for a re-embed: each batch of records becomes one part file.

    ``encoded`` counts the records written."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.encoded = 0

    def commit(self, shapes: list[EncodedShape]) -> None:
        if shapes:
            log.debug("phase part %d", len(shapes))
            self.parts.write([s.record for s in shapes])
            self.encoded += len(shapes)

    def close(self) -> None:
        """Nothing buffered: every part is on disk when ``commit`` returns."""


__all__ = ["TARGET_FILE", "PartSink", "Parts"]
