"""A per-machine cache of onnxruntime's optimised encoder graphs.

Why: building a session for EfficientNet-Lite0 spends ~0.15 s of a cold
``ftspl query`` (~1 s in all) on graph optimisation (constant folding, fusions,
the NCHWc layout pass). onnxruntime can save the optimised graph, and loading
that with optimisations off takes ~0.04 s. The saved graph is specific to the
CPU's instruction set and the onnxruntime version (NCHWc block sizes differ
between AVX2 and AVX-512), so the cache key holds both, plus the source model's
sha256 and the execution providers; on a GPU provider nothing is cached.

Safety: the source model is still checked against the manifest's sha256 before
anything else happens, and a cached graph is only used when its own sha256
matches the record written beside it, so a torn, stale or edited cache file is
ignored (and rebuilt), never trusted. The cache is an optimisation only: any
problem reading or writing it is logged and the session is built as before.

Layout (``<home>/cache/onnxruntime/``): ``<encoder>-<key>.json`` names the
payload ``<encoder>-<key>.<sha16>.onnx``; both are replaced atomically, so
concurrent readers never see a half-written graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from pathlib import Path

from ftspl.engine.files import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["GraphCache", "machine_key"]


def machine_key() -> str:
    """What an optimised CPU graph depends on: architecture and the CPU's feature flags."""
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    return f"{platform.machine()}|{flags}"


class GraphCache:
    """Optimised graphs of one machine, keyed by model hash, providers and onnxruntime version."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def key(self, name: str, model_sha256: str, providers: list[str], ort_version: str) -> str:
        blob = json.dumps([name, model_sha256, providers, ort_version, machine_key()])
        return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def get(self, key: str) -> bytes | None:
        """The cached graph for ``key`` if present and intact, else None."""
        record = self.folder / f"{key}.json"
        try:
            meta = json.loads(record.read_text())
            payload = self.folder / str(meta["payload"])
            if payload.parent != self.folder or not payload.name.startswith(key + "."):
                return None
            data = payload.read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("%s: unreadable graph cache entry (%s); rebuilding it", record, exc)
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            log.info("%s: cached graph does not match its sha256; rebuilding it", record)
            return None
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` for ``key``; failures (read-only home, disk full) are logged, not raised."""
        digest = hashlib.sha256(data).hexdigest()
        payload = self.folder / f"{key}.{digest[:16]}.onnx"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(payload, data)
            atomic_write_bytes(self.folder / f"{key}.json",
                               json.dumps({"payload": payload.name, "sha256": digest}).encode())
        except OSError as exc:
            log.info("%s: cannot write the graph cache (%s); sessions are built from scratch", self.folder, exc)
            return
        for old in self.folder.glob(f"{key}.*.onnx"):  # superseded payloads of this key
            if old != payload:
                with contextlib.suppress(OSError):
                    old.unlink()
