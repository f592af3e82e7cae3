"""Where models, the index and every cache live: a project-local home folder.

Resolution order: an explicit ``--home`` path, then ``$FTSPL_HOME``, then
``./.ftspl`` in the current directory (like ``.git``: the index belongs to the
project folder the user works in). Nothing here is global state: every caller
builds a :class:`Home` and passes it down.

Caches (optimised encoder graphs, rendered training views, backbone features,
downloaded Debian packages) sit under ``<home>/cache/``, or under
``$FTSPL_CACHE`` when it is set (one cache shared by several homes, e.g. by
tests and benchmarks that each build a home but fetch the same packages). This
module is the only place that reads either variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ftspl.engine.errors import ModelError

HOME_ENV = "FTSPL_HOME"
HOME_DIRNAME = ".ftspl"
CACHE_ENV = "FTSPL_CACHE"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | Path | None = None, cwd: str | Path | None = None) -> "Home":
        """``explicit``, else ``$FTSPL_HOME``, else ``<cwd>/.ftspl`` (``cwd``: the current folder).

        ``cwd`` lets scripts anchor the default home at the repository rather than
        wherever they are started from.
        """
        if explicit:
            return cls(Path(explicit).expanduser().resolve())
        env = os.environ.get(HOME_ENV)
        if env:
            return cls(Path(env).expanduser().resolve())
        return cls((Path(cwd if cwd is not None else Path.cwd()) / HOME_DIRNAME).resolve())

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def cache(self) -> Path:
        """The cache root: ``$FTSPL_CACHE`` when set, else ``<home>/cache``; safe to delete."""
        env = os.environ.get(CACHE_ENV)
        return Path(env).expanduser().resolve() if env else self.root / "cache"

    @property
    def debian_cache(self) -> Path:
        """Debian packages fetched with ``apt-get download`` (benchmark data, test corpora)."""
        return self.cache / "debian"

    @property
    def active_file(self) -> Path:
        return self.models / "ACTIVE"

    def model_dir(self, model_id: str) -> Path:
        return self.models / model_id

    def active_model_dir(self) -> Path:
        """The folder of the model that ``ftspl export`` last made active."""
        try:
            model_id = self.active_file.read_text().strip()
        except FileNotFoundError:
            raise ModelError(
                f"{self.models}: no model yet; run 'ftspl export --pretrained' (or 'ftspl export RUN') first"
            ) from None
        path = self.model_dir(model_id)
        if not model_id or "/" in model_id or not (path / "manifest.json").is_file():
            raise ModelError(
                f"{self.active_file}: points to missing model {model_id!r}; run 'ftspl export' again"
            )
        return path

    def set_active(self, model_id: str) -> None:
        """Atomically point ACTIVE at ``model_id``."""
        from ftspl.engine.files import atomic_write_bytes

        self.models.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.active_file, (model_id + "\n").encode())
