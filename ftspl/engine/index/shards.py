"""Parquet shards of encoded shapes: what any engine (Ray, Spark, Slurm, one machine) writes and ``index merge`` reads.

A shard is one Parquet file with one row per shape; ``docs/SCALING.md`` documents
the columns for writers in other languages. Required columns: ``path`` (absolute),
``content_hash`` (sha256 hex of the file, or of a view folder's names and bytes),
``label``, ``render_spec_hash``, ``model_id`` and ``embedding`` (a list of
float32, the model's ``embed_dim`` values). Optional: ``model_hash``, ``kind``
(``mesh``/``views``, default ``mesh``), ``faces`` and ``preview`` (PNG bytes).
Shards that ftspl writes also carry the render spec itself in the file's
key-value metadata (key ``ftspl``), so a merge into a fresh index needs nothing else.

Files appear atomically (temp name, fsync, rename), so a killed writer leaves only
whole shards, and a rerun into the same folder skips the shapes they hold.
``pyarrow`` is imported inside functions: the engine imports without it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.errors import FtsplError, IndexStateError, InputFileError, WriteError
from ftspl.engine.index.pipeline.records import EncodedShape
from ftspl.engine.index.store.schema import ShapeRecord, normalize_path, validate_record

log = logging.getLogger(__name__)

SHARD_FORMAT = "ftspl-shard/1"
META_KEY = b"ftspl"
REQUIRED = ("path", "content_hash", "label", "render_spec_hash", "model_id", "embedding")
OPTIONAL = ("model_hash", "kind", "faces", "preview", "view_embeddings", "view_strip")
IDENTITY = ("model_id", "model_hash", "render_spec_hash")
ROWS_PER_SHARD = 1024  #: about 20 MB per shard with previews


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise FtsplError("Parquet shards need pyarrow: pip install 'ftspl[ray]'") from None
    return pa, pc, pq


@dataclass(frozen=True)
class ShardIdentity:
    """Which model and render spec made a shard's embeddings (they compare only within one identity)."""

    model_id: str
    model_hash: str | None
    render_spec_hash: str
    render_spec: dict | None = None  #: the spec itself, when the writer stored it

    @classmethod
    def of(cls, manifest, spec) -> ShardIdentity:
        return cls(manifest.model_id, manifest.model_hash, spec.digest(), spec.to_dict())

    def describe(self) -> str:
        return f"model {self.model_id}, render spec {self.render_spec_hash}"


class ShardWriter:
    """A sink (see :mod:`~ftspl.engine.index.pipeline`) that writes records to Parquet shards in ``folder``.

    Buffers up to ``rows_per_shard`` records (or ``flush_every_s`` seconds) per
    file; ``report.added`` counts the shapes written; ``files`` lists the shards.
    """

    def __init__(self, folder: str | Path, identity: ShardIdentity, report, rows_per_shard: int = ROWS_PER_SHARD,
                 flush_every_s: float = 60.0) -> None:
        self.folder = Path(folder)
        self.identity, self.report = identity, report
        self.rows_per_shard, self.flush_every_s = max(1, rows_per_shard), flush_every_s
        self.files: list[Path] = []
        self._buf: list[ShapeRecord] = []
        self._last = time.monotonic()
        self._prefix = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"

    def commit(self, shapes: list[EncodedShape]) -> None:
        self._buf.extend(s.record for s in shapes)
        if len(self._buf) >= self.rows_per_shard or time.monotonic() - self._last > self.flush_every_s:
            self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        while self._buf:
            rows, self._buf = self._buf[: self.rows_per_shard], self._buf[self.rows_per_shard :]
            path = self.folder / f"{self._prefix}-{len(self.files):05d}.parquet"
            _write_atomic(path, self._table(rows))
            self.files.append(path)
            self.report.added += len(rows)
            log.debug("phase shard %d %s", len(rows), path.name)
        self._last = time.monotonic()

    def _table(self, rows: list[ShapeRecord]):
        pa, _, _ = _pa()
        emb = np.stack([np.asarray(r.embedding, np.float32) for r in rows])
        n, dim = emb.shape
        ident = self.identity
        meta = {"format": SHARD_FORMAT, "embed_dim": dim, "render_spec": ident.render_spec}
        cols = {
            "path": pa.array([normalize_path(r.path) for r in rows], pa.string()),
            "content_hash": pa.array([r.content_hash for r in rows], pa.string()),
            "label": pa.array([r.label for r in rows], pa.string()),
            "render_spec_hash": pa.array([ident.render_spec_hash] * n, pa.string()),
            "model_id": pa.array([ident.model_id] * n, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim),
            "model_hash": pa.array([ident.model_hash] * n, pa.string()),
            "kind": pa.array([r.kind for r in rows], pa.string()),
            "faces": pa.array([r.faces for r in rows], pa.int64()),
            "preview": pa.array([None if r.preview is None else bytes(r.preview) for r in rows], pa.binary()),
        }
        if any(r.view_embeddings is not None for r in rows):  # models with per-view output (matched view)
            # float32 bytes of the (V, D) matrix: the merge quantises them exactly as a plain add does
            cols["view_embeddings"] = pa.array(
                [None if r.view_embeddings is None else np.ascontiguousarray(r.view_embeddings, np.float32).tobytes()
                 for r in rows], pa.binary())
            cols["view_strip"] = pa.array([None if r.view_strip is None else bytes(r.view_strip) for r in rows],
                                          pa.binary())
        return pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def _write_atomic(path: Path, table) -> None:
    """Write a Parquet file under a hidden temp name, fsync it, rename it into place."""
    _, _, pq = _pa()
    from ftspl.engine.files import fsync_dir, fsync_file

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, exc.strerror or str(exc), exc.errno) from exc
    fsync_dir(path.parent)


# ---------------------------------------------------------------- reading


def shard_files(folders: Iterable[str | Path], allow_empty: bool = False) -> list[Path]:
    """Every ``*.parquet`` file under the folders (recursively; names starting with ``.`` or ``_`` are skipped)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        if folder.is_file() and folder.suffix == ".parquet":
            found.append(folder.resolve())
            continue
        if not folder.is_dir():
            raise InputFileError(folder, "no such folder of shards")
        here = sorted(p.resolve() for p in folder.rglob("*.parquet")
                      if p.is_file() and not any(part[:1] in "._" for part in p.relative_to(folder).parts))
        if not here and not allow_empty:
            raise InputFileError(folder, "holds no Parquet shards (*.parquet); write some with 'ftspl index add ROOT --shards DIR'")
        found += here
    return list(dict.fromkeys(found))


def _check_schema(path: Path, schema) -> None:
    pa, _, _ = _pa()
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise InputFileError(path, f"not an ftspl shard: missing column(s) {', '.join(missing)} (see docs/SCALING.md)")
    for name in ("path", "content_hash", "label", "render_spec_hash", "model_id", "model_hash", "kind"):
        if name in schema.names and not (pa.types.is_string(schema.field(name).type)
                                         or pa.types.is_large_string(schema.field(name).type)
                                         or pa.types.is_null(schema.field(name).type)):
            raise InputFileError(path, f"column {name} must hold strings, not {schema.field(name).type}")
    etype = schema.field("embedding").type
    if not (pa.types.is_list(etype) or pa.types.is_large_list(etype) or pa.types.is_fixed_size_list(etype)) or not (
        pa.types.is_float32(etype.value_type) or pa.types.is_float64(etype.value_type)
    ):
        raise InputFileError(path, f"column embedding must be a list of float32, not {etype}")


def read_identity(files: list[Path]) -> ShardIdentity:
    """The one model/render spec of all ``files``; refuses a bad file or a mix of identities."""
    _, _, pq = _pa()
    seen: dict[tuple, Path] = {}
    spec: dict | None = None
    for path in files:
        try:
            pf = pq.ParquetFile(path)
            _check_schema(path, pf.schema_arrow)
            cols = [c for c in IDENTITY if c in pf.schema_arrow.names]
            table = pf.read(columns=cols)
        except InputFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError subclasses for bad files
            raise InputFileError(path, f"not a readable Parquet file ({exc})") from None
        meta = (pf.schema_arrow.metadata or {}).get(META_KEY)
        if meta and spec is None:
            try:
                spec = json.loads(meta).get("render_spec")
            except (ValueError, AttributeError):
                spec = None
        for row in table.group_by(cols).aggregate([]).to_pylist():  # the distinct identities
            seen.setdefault(tuple(row.get(c) for c in IDENTITY), path)
    if not seen:
        raise InputFileError(files[0] if files else ".", "the shards hold no rows")
    model_ids = {k[0] for k in seen}
    model_hashes = {k[1] for k in seen if k[1] is not None}
    spec_hashes = {k[2] for k in seen}
    if len(model_ids) > 1 or len(model_hashes) > 1 or len(spec_hashes) > 1:
        shown = "; ".join(f"{p.name}: model {k[0]}, render spec {k[2]}" for k, p in list(seen.items())[:3])
        raise InputFileError(files[0].parent, f"shards from more than one model or render spec ({shown}); "
                                              "merge each kind into its own home")
    (model_id,), (spec_hash,) = model_ids, spec_hashes
    model_hash = next(iter(model_hashes), None)
    if not model_id or not spec_hash:
        raise InputFileError(next(iter(seen.values())), "rows without model_id or render_spec_hash")
    return ShardIdentity(model_id, model_hash, spec_hash, spec)


def check_model(found: ShardIdentity, manifest, where: str) -> None:
    """Refuse shards made by another model than the active one (their embeddings do not compare)."""
    if found.model_id != manifest.model_id or (found.model_hash and found.model_hash != manifest.model_hash):
        raise IndexStateError(
            f"{where}: shards were made by model {found.model_id}, the active model is {manifest.model_id}; "
            "make that model active (ftspl export) or write the shards again with this one"
        )


def resolve_spec(found: ShardIdentity, model_spec):
    """The render spec with the shards' hash: the one they carry, or the model's with up y or z."""
    from ftspl.engine.constants import RenderSpec

    candidates = [model_spec.with_up(up) for up in ("y", "z")]
    if found.render_spec:
        candidates.insert(0, RenderSpec.from_dict(found.render_spec))
    for spec in candidates:
        if spec.digest() == found.render_spec_hash:
            return spec
    raise IndexStateError(
        f"shards were rendered with render spec {found.render_spec_hash}, which is not the active model's "
        f"({model_spec.digest()} for --up {model_spec.up}); write them again with this model's spec"
    )


def known_shapes(folder: Path, identity: ShardIdentity) -> dict[str, tuple[None, str]]:
    """``path -> (None, content_hash)`` already in ``folder``'s shards (a rerun skips them).

    Refuses a folder that holds shards of another model or render spec.
    """
    _, _, pq = _pa()
    files = shard_files([folder], allow_empty=True) if folder.is_dir() else []
    if not files:
        return {}
    found = read_identity(files)
    if (found.model_id, found.render_spec_hash) != (identity.model_id, identity.render_spec_hash):
        raise IndexStateError(f"{folder}: holds shards of {found.describe()}, not {identity.describe()}; "
                              "write to another folder")
    known: dict[str, tuple[None, str]] = {}
    for path in files:
        table = pq.read_table(path, columns=["path", "content_hash"])
        for p, h in zip(table.column("path").to_pylist(), table.column("content_hash").to_pylist()):
            known[normalize_path(p)] = (None, h)
    return known


def _embeddings(column, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``dim`` values as float32, mask of the rows that have exactly ``dim``)."""
    pa, pc, _ = _pa()
    lengths = np.asarray(pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False))
    ok = lengths == dim
    good = column.filter(pa.array(ok)) if not ok.all() else column
    flat = np.asarray(pc.list_flatten(good).to_numpy(zero_copy_only=False))
    mat = np.zeros((len(ok), dim), np.float32)
    mat[ok] = flat.astype(np.float32, copy=False).reshape(-1, dim)
    return mat, ok


def _view_matrix(raw: bytes | None, dim: int) -> np.ndarray | None:
    """A row's per-view embeddings (V, D) from their float32 bytes; None when absent or not whole rows."""
    if not raw or len(raw) % (4 * dim):
        return None
    return np.frombuffer(raw, np.float32).reshape(-1, dim).copy()


def row_count(files: list[Path]) -> int:
    """Rows in all ``files`` (from the Parquet footers)."""
    _, _, pq = _pa()
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def iter_rows(files: list[Path], dim: int, batch_rows: int = 1024) -> Iterator[tuple[str, ShapeRecord | None, str | None]]:
    """``(path, record, None)`` per valid row, ``(path, None, reason)`` per invalid one, file by file."""
    _, _, pq = _pa()
    for file in files:
        pf = pq.ParquetFile(file)
        names = pf.schema_arrow.names
        cols = list(REQUIRED) + [c for c in OPTIONAL if c in names]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            n = batch.num_rows
            get = {c: batch.column(c).to_pylist() for c in cols if c != "embedding"}
            mat, ok = _embeddings(batch.column("embedding"), dim)
            for i in range(n):
                path = get["path"][i]
                if not path or not Path(path).is_absolute():
                    yield str(path), None, f"in shard {file.name}: path must be absolute"
                    continue
                if not ok[i]:
                    yield path, None, f"in shard {file.name}: embedding must have {dim} values"
                    continue
                kind = get["kind"][i] if "kind" in get and get["kind"][i] else "mesh"
                faces = get["faces"][i] if "faces" in get else None
                views = _view_matrix(get["view_embeddings"][i] if "view_embeddings" in get else None, dim)
                rec = ShapeRecord(path=path, content_hash=get["content_hash"][i], label=get["label"][i], faces=faces,
                                  kind=kind, embedding=mat[i], preview=get["preview"][i] if "preview" in get else None,
                                  view_embeddings=views,
                                  view_strip=get["view_strip"][i] if views is not None and "view_strip" in get else None)
                try:
                    validate_record(rec, dim, path)
                except ValueError as exc:
                    yield path, None, f"in shard {file.name}: {str(exc).removeprefix(path + ': ')}"
                    continue
                yield path, rec, None


__all__ = [
    "ShardIdentity",
    "ShardWriter",
    "check_model",
    "iter_rows",
    "known_shapes",
    "read_identity",
    "resolve_spec",
    "row_count",
    "shard_files",
]
