"""Real odd and broken meshes from Debian's parser test corpora, for the reliability test.

Three packages ship the regression files of mesh parsers:

* ``assimp-testmodels``: assimp's test models, with an ``invalid/`` folder,
  glTF schema failures, out-of-range indices, infinite vertices, UTF-16 OBJ,
  Draco-compressed glTF, point clouds, lines and glTF 1.0 files;
* ``libcgal-demo``: its ``data.tar.gz`` holds CGAL's OFF/PLY/STL meshes
  (degenerate, non-manifold, polygonal, with holes) and point sets;
* ``openscad-testing-data``: OpenSCAD's broken STLs (empty, unparseable,
  too many vertices per facet, invalid vertices).

They are fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
into a git-ignored cache (:func:`ftspl.data.sh3d.fetch_package`, so the same
rules apply: no root needed, a missing apt list is a clear
:class:`~ftspl.data.sh3d.DataFetchError` naming ``apt-get update``). Nothing is
committed. :func:`broken_files` lists every file with an extension ftspl
reads, per package.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path, PurePosixPath

from ftspl.data.sh3d import DataFetchError, fetch_package
from ftspl.engine.loading.meshes import mesh_extensions

log = logging.getLogger(__name__)

__all__ = ["BROKEN_PACKAGES", "broken_files", "default_cache", "fetch_broken"]

#: package -> (a path under ``root`` that exists once unpacked, the folder whose meshes are listed)
BROKEN_PACKAGES: dict[str, tuple[str, str]] = {
    "assimp-testmodels": ("usr/share/assimp/models", "usr/share/assimp/models"),
    "libcgal-demo": ("usr/share/doc/libcgal-dev/data.tar.gz", ""),  # listed from the extracted tarball
    "openscad-testing-data": ("usr/share/openscad", "usr/share/openscad"),
}
CGAL_TARBALL = "usr/share/doc/libcgal-dev/data.tar.gz"
CGAL_DIR = "cgal-data"  #: under the cache: the tarball's mesh files
_DONE = ".complete"
_MAX_MEMBER_BYTES = 256 * 1024 * 1024


def default_cache() -> Path:
    """The home's Debian package cache (:attr:`ftspl.engine.home.Home.debian_cache`), shared with the other fetchers."""
    from ftspl.engine.home import Home

    return Home.resolve().debian_cache


def _extract_meshes(tar_path: Path, dest: Path) -> Path:
    """Extract only the regular files with a mesh extension from a tarball, once.

    Why by hand instead of ``extractall``: a tarball is data from outside, so
    only plain files with safe relative names are written (no links, devices,
    absolute paths or ``..``), and only the ones the test reads (46 MB of CGAL
    data is mostly images and point sets in other formats).
    """
    if (dest / _DONE).exists():
        return dest
    exts = set(mesh_extensions())
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for member in tf:
                rel = PurePosixPath(member.name)
                if (
                    not member.isfile()
                    or rel.is_absolute()
                    or ".." in rel.parts
                    or rel.suffix.lower() not in exts
                    or member.size > _MAX_MEMBER_BYTES
                ):
                    continue
                src = tf.extractfile(member)
                if src is None:
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        out.write(block)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataFetchError(f"{tar_path}: cannot extract ({exc})") from exc
    (dest / _DONE).write_text("ok\n")
    return dest


def fetch_broken(cache: Path | None = None) -> dict[str, Path]:
    """Download and unpack the three packages once; package -> folder holding its meshes.

    Raises :class:`DataFetchError` (apt-get/dpkg-deb missing, no apt list,
    no network) with the command to run.
    """
    cache = Path(cache) if cache is not None else default_cache()
    folders: dict[str, Path] = {}
    for package, (marker, listed) in BROKEN_PACKAGES.items():
        root = fetch_package(cache, package, marker)
        if package == "libcgal-demo":
            folders[package] = _extract_meshes(root / CGAL_TARBALL, cache / CGAL_DIR)
        else:
            folders[package] = root / listed
    return folders


def broken_files(cache: Path | None = None) -> dict[str, list[Path]]:
    """package -> every file (sorted) whose extension ftspl reads, fetching the packages if needed."""
    exts = set(mesh_extensions())
    out: dict[str, list[Path]] = {}
    for package, folder in fetch_broken(cache).items():
        out[package] = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        log.info("%s: %d mesh files under %s", package, len(out[package]), folder)
    return out
