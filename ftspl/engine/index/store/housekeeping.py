"""The housekeeping verbs of :class:`~ftspl.engine.index.store.shapes.ShapeStore`: files that are the same
bytes, and shapes whose file moved.

* :meth:`Housekeeping.same_content` lists the shapes that share a content hash
  (exact duplicates: ``index duplicates`` reports them before the near ones);
* :meth:`Housekeeping.repoint` gives a stored shape a new path and label when
  its file moved (``index add --prune``): its id, embedding, preview and view
  codes stay, so nothing is rendered again and the ANN index is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftspl.engine.index.store.schema import normalize_path, sqlite_errors


class Housekeeping:
    """Mixed into :class:`~ftspl.engine.index.store.shapes.ShapeStore` (uses its connection and ``batch``)."""

    @sqlite_errors
    def same_content(self) -> list[list[tuple[int, str, str | None]]]:
        """Every content hash stored more than once: its shapes as ``(id, path, label)``, by id; groups by
        their first id."""
        rows = self._conn.execute(
            """SELECT id, path, label, content_hash FROM shapes WHERE content_hash IN
                 (SELECT content_hash FROM shapes GROUP BY content_hash HAVING count(*) > 1)
               ORDER BY content_hash, id"""
        ).fetchall()
        groups: dict[str, list[tuple[int, str, str | None]]] = {}
        for i, path, label, digest in rows:
            groups.setdefault(digest, []).append((int(i), str(path), label))
        return sorted(groups.values(), key=lambda g: g[0][0])

    @sqlite_errors
    def repoint(self, moves: Sequence[tuple[str | Path, str | Path, str | None]]) -> list[int]:
        """Move shapes to new paths: ``(old path, new path, new label)`` each, in one transaction (or the
        enclosing :meth:`batch`); the ids moved, in order (an old path not stored is skipped).

        The embedding is the same, so the row's ``changed_gen`` stays and no ANN
        index needs the row again; the generation is bumped so that readers
        reload the labels.
        """
        moved: list[int] = []
        with self.batch():
            for old, new, label in moves:
                row = self._conn.execute("UPDATE shapes SET path = ?, label = ? WHERE path = ? RETURNING id",
                                         (normalize_path(new), label, normalize_path(old))).fetchone()
                if row is not None:
                    moved.append(int(row[0]))
            if moved:
                self._dirty = True
        return moved


__all__ = ["Housekeeping"]
