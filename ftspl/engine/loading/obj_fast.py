"""A geometry-only Wavefront OBJ reader for the gallery renderer.

Why hand-written: the gallery views are grey and flat-shaded, so all they need
from an OBJ file is vertex positions and faces. trimesh's OBJ loader also
builds texture coordinates, normals, groups and materials, and drops into a
per-line Python fallback for files that mix triangles and quads or carry
``v/vt/vn`` indices -- most real catalogue files. On the Sweet Home 3D
furniture that measured about 70 ms per model against 10-15 ms here
(``benchmarks/run.py`` reports the end-to-end effect). Anything this reader
cannot parse raises ``ValueError`` and the caller falls back to trimesh, so
files from the wild load no worse than before.

What it reads: ``v x y z [w | r g b]`` and ``f i[/vt][/vn] ...`` with 1-based
or negative (relative) indices, polygons fan-triangulated; ``#`` comment
lines are skipped. Rarer syntax (indented lines, trailing comments on v/f
lines, line continuations) raises ``ValueError`` and goes to trimesh. Everything else (``vt``, ``vn``, ``l``, ``g``,
``usemtl``, ``mtllib``...) is ignored; in particular no other file is opened.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["TooManyFaces", "parse_obj"]


class TooManyFaces(ValueError):
    """The file has more triangles than the caller allows (raised before building them)."""

_SPACE_LUT = np.zeros(256, dtype=bool)
_SPACE_LUT[[32, 9, 13, 10, 11, 12]] = True  # what bytes.split() treats as whitespace


def _is_space(b: np.ndarray) -> np.ndarray:
    return _SPACE_LUT[b]


def _numbers(block: np.ndarray, dtype: type) -> np.ndarray:
    """Parse whitespace-separated numbers; an unparsable token shortens the result."""
    text = block.tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # partial reads are detected by the caller
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except ValueError:  # numpy >= 2.3 raises on unmatched text instead of stopping
            return np.zeros(0, dtype)


def _select_lines(b: np.ndarray, starts: np.ndarray, lengths: np.ndarray, chosen: np.ndarray, skip: int) -> np.ndarray:
    """The bytes of the chosen lines without their first ``skip`` bytes, each ending in whitespace."""
    keep = np.repeat(chosen, lengths)
    first = starts[chosen]
    for k in range(skip):  # chosen lines are at least ``skip`` bytes long ("v " / "f ")
        keep[first + k] = False
    out = b[keep]
    return out if len(out) == 0 or out[-1] == 10 else np.append(out, np.uint8(10))


def _tokens_per_line(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token count per line, token-start mask) of a block whose every line ends in a newline."""
    space = _is_space(block)
    first = ~space & np.r_[True, space[:-1]]
    newlines = np.flatnonzero(block == 10)
    line = np.searchsorted(newlines, np.flatnonzero(first))
    return np.bincount(line, minlength=len(newlines)), first


def parse_obj(data: bytes, max_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse OBJ bytes into (vertices float64 (n, 3), triangles int64 (m, 3), 0-based).

    Raises ``ValueError`` with a reason for malformed numbers, indices that
    point to no vertex, indented or continued lines (left to trimesh), or more
    than ``max_faces`` triangles. Faces with fewer than three vertices are
    skipped, as lines and points are not surfaces. Vectorised over the raw
    bytes: no Python loop runs per line.
    """
    if b"\\" in data:
        raise ValueError("line continuations are not handled by the fast reader")
    if not data.endswith(b"\n"):
        data += b"\n"  # every line, the last included, must end in a newline for the per-line counts
    b = np.frombuffer(data, dtype=np.uint8)
    if len(b) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    starts = np.r_[0, np.flatnonzero(b == 10) + 1]
    starts = starts[starts < len(b)]
    lengths = np.diff(np.r_[starts, len(b)])
    c0 = b[starts]
    c1 = np.where(starts + 1 < len(b), b[np.minimum(starts + 1, len(b) - 1)], 10)
    lead = (c0 == 32) | (c0 == 9)
    indented = lead & np.logical_or.reduceat(~_is_space(b), starts) if lead.any() else lead
    if indented.any():
        raise ValueError("indented lines are not handled by the fast reader")
    sep = (c1 == 32) | (c1 == 9)
    is_v = (c0 == ord("v")) & sep
    is_f = (c0 == ord("f")) & sep
    if not is_v.any() or not is_f.any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)

    # vertices: "v x y z [w | r g b]" -> first three numbers of each line
    vblock = _select_lines(b, starts, lengths, is_v, 2)
    if b"#"[0] in vblock:
        raise ValueError("comments inside vertex lines are not handled by the fast reader")
    widths, _ = _tokens_per_line(vblock)
    values = _numbers(vblock, np.float64)
    if len(values) != int(widths.sum()):
        raise ValueError("a vertex line holds something that is not a number")
    if (widths < 3).any():
        raise ValueError("a vertex line has fewer than 3 coordinates")
    if (widths == widths[0]).all():
        vertices = values.reshape(-1, int(widths[0]))[:, :3]
    else:
        first = np.cumsum(widths) - widths
        vertices = values[first[:, None] + np.arange(3)]

    # faces: "f a/b/c d//e f ..." -> the vertex index before the first slash
    fblock = _select_lines(b, starts, lengths, is_f, 2)
    if b"#"[0] in fblock:
        raise ValueError("comments inside face lines are not handled by the fast reader")
    counts, tok_start = _tokens_per_line(fblock)
    slash = fblock == ord("/")
    if slash.any():
        # Blank out everything from a token's first slash to its end (texture/normal indices).
        tok_id = np.cumsum(tok_start)
        cs = np.cumsum(slash)
        before = np.zeros(int(tok_id[-1]) + 1, dtype=cs.dtype)
        before[tok_id[tok_start]] = cs[tok_start] - slash[tok_start]
        fblock = np.where((cs - before[tok_id]) > 0, np.uint8(32), fblock)
    flat = _numbers(fblock, np.int64)
    if len(flat) != int(counts.sum()):
        raise ValueError("a face line holds something that is not a vertex index")
    keep = counts >= 3
    if not keep.all():  # drop points and lines ("f 1" / "f 1 2")
        flat = flat[np.repeat(keep, counts)]
    f_lines = np.flatnonzero(is_f)[keep]
    counts = counts[keep]
    n_tris = int((counts - 2).sum())
    if max_faces is not None and n_tris > max_faces:
        raise TooManyFaces(n_tris)
    if n_tris == 0:
        return vertices, np.zeros((0, 3), np.int64)
    if (flat == 0).any():
        raise ValueError("a face refers to vertex 0; OBJ indices start at 1")
    negative = flat < 0
    if negative.any():
        # Relative indices count back from the vertices defined *so far*.
        seen_before = np.cumsum(is_v)[f_lines]
        flat = np.where(negative, np.repeat(seen_before, counts) + flat, flat - 1)
    else:
        flat = flat - 1
    if flat.min() < 0 or flat.max() >= len(vertices):
        raise ValueError("a face refers to a vertex that does not exist")

    # Fan triangulation: polygon (p0..pk) -> (p0, pj, pj+1) for j in 1..k-1.
    per = counts - 2
    first = np.repeat(np.cumsum(counts) - counts, per)
    j = np.arange(n_tris) - np.repeat(np.cumsum(per) - per, per) + 1
    return vertices, np.stack([flat[first], flat[first + j], flat[first + j + 1]], axis=1)
