"""Real third-party meshes: Sweet Home 3D furniture from Debian, with a curated class map.

The models come from Debian's ``sweethome3d-furniture`` package (five ``.sh3f``
zip libraries of CC0 / CC-BY 3.0 OBJ models) and from the default catalogue
inside the ``sweethome3d`` jar (GPL-2+ / CC-BY 3.0). They are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache folder that
git ignores (both packages share one ``root``, so the jar is always
``<libdir>/../sweethome3d.jar``); nothing is committed but the class map
(``sh3d_classes.csv``, vendored from the project's curated list, with the
licence and creator of every model, credited in the NOTICE we write beside the
extracted data).
"""

from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from ftspl.engine.errors import FtsplError
from ftspl.engine.files import atomic_write_bytes

log = logging.getLogger(__name__)

FURNITURE_PACKAGE = "sweethome3d-furniture"
CATALOG_PACKAGE = "sweethome3d"
LIBRARY_DIR = "usr/share/sweethome3d/furniture"
JAR_NAME = "sweethome3d.jar"
#: The jar's OBJ reader has a built-in material library (``usemtl white`` with no
#: ``mtllib``); its text is a string constant of this class.
_OBJ_LOADER_CLASS = "com/eteks/sweethome3d/j3d/OBJLoader.class"
DEFAULT_MTL = "sh3d_default.mtl"


class DataFetchError(FtsplError):
    """A Debian package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class Sh3dModel:
    source: str  #: package:library, e.g. sweethome3d-furniture:Scopia.sh3f
    catalog_id: int
    name: str
    model_path: str  #: the OBJ inside the zip
    icon_path: str
    label: str
    license: str
    creator: str
    faces: int

    @property
    def library(self) -> str:
        return self.source.split(":", 1)[1]

    @property
    def key(self) -> str:
        """A stable, filesystem-safe name for this model."""
        lib = self.library.replace(".sh3f", "").lower()
        stem = PurePosixPath(self.model_path).stem
        return f"{lib}-{self.catalog_id:03d}-{stem}"[:80]


def read_classes() -> list[Sh3dModel]:
    """The curated class map shipped inside the package (rows that load)."""
    text = resources.files("ftspl.data").joinpath("sh3d_classes.csv").read_text(encoding="utf-8")
    out = []
    for row in csv.DictReader(text.splitlines()):
        if row["loads"] != "True":
            continue
        out.append(
            Sh3dModel(
                source=row["source"], catalog_id=int(row["catalog_id"]), name=row["name"],
                model_path=row["model_path"], icon_path=row["icon_path"], label=row["class"],
                license=row["license"], creator=row["creator"], faces=int(row["faces"] or 0),
            )
        )
    return out


def all_models() -> list[Sh3dModel]:
    """Every curated model: the furniture libraries and the jar's default catalogue."""
    return read_classes()


def furniture_models() -> list[Sh3dModel]:
    """Models of the ``sweethome3d-furniture`` libraries (the default catalogue lives elsewhere)."""
    return [m for m in read_classes() if m.source.startswith(FURNITURE_PACKAGE + ":")]


def fetch_package(cache: Path, package: str, marker: str) -> Path:
    """Download (``apt-get download``) and unpack (``dpkg-deb -x``) a Debian package once.

    ``marker`` is a path under ``cache/root`` that exists once the package is
    unpacked, so a second call does no work. Returns ``cache/root``.
    """
    cache = Path(cache)
    root = cache / "root"
    if (root / marker).exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataFetchError("apt-get/dpkg-deb not found: the real-mesh data comes from Debian packages")
    deb = _find_deb(cache, package)
    if deb is None:
        log.info("apt-get download %s", package)
        res = subprocess.run(["apt-get", "download", package], check=False, cwd=cache, capture_output=True, text=True)
        deb = _find_deb(cache, package)
        if res.returncode != 0 or deb is None:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataFetchError(f"apt-get download {package} failed ({last}); run 'apt-get update' and retry")
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=False, capture_output=True, text=True)
    if res.returncode != 0:
        raise DataFetchError(f"{deb}: dpkg-deb -x failed: {res.stderr.strip()[:200]}")
    if not (root / marker).exists():
        raise DataFetchError(f"{deb}: {marker} not found in the package")
    return root


def _find_deb(cache: Path, package: str) -> Path | None:
    # "<name>_<version>_<arch>.deb": the name must match exactly (sweethome3d vs sweethome3d-furniture).
    debs = sorted(p for p in Path(cache).glob(f"{package}_*.deb") if p.name.split("_", 1)[0] == package)
    return debs[-1] if debs else None


def package_version(cache: Path, package: str) -> str:
    """The Debian version of a fetched package (from its .deb's file name), or "" if absent."""
    from urllib.parse import unquote

    deb = _find_deb(cache, package)
    return unquote(deb.name.split("_")[1]) if deb is not None else ""  # apt writes an epoch's ':' as %3a


def fetch_furniture(cache: Path) -> Path:
    """Download and unpack the furniture package once; return its library folder."""
    root = fetch_package(cache, FURNITURE_PACKAGE, f"{LIBRARY_DIR}/Scopia.sh3f")
    return root / LIBRARY_DIR


def fetch_sources(cache: Path) -> Path:
    """Both packages (furniture libraries + the default catalogue's jar); return the library folder.

    Pass the result to :func:`extract_model` / :func:`extract_icon` for any row
    of the class map, whichever package it comes from.
    """
    fetch_package(cache, CATALOG_PACKAGE, f"usr/share/sweethome3d/{JAR_NAME}")
    return fetch_furniture(cache)


def archive_path(libdir: Path, model: Sh3dModel) -> Path:
    """The zip (``.sh3f`` library or the jar) that holds ``model``."""
    if model.source.startswith(CATALOG_PACKAGE + ":"):
        return Path(libdir).parent / JAR_NAME
    return Path(libdir) / model.library


def _safe_member(name: str, prefix: PurePosixPath) -> PurePosixPath | None:
    """The path of a zip member relative to ``prefix``, or None if outside it or unsafe."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        return None
    try:
        return p.relative_to(prefix)
    except ValueError:
        return None


def extract_model(libdir: Path, model: Sh3dModel, dest: Path) -> Path:
    """Extract one model (OBJ, MTL, textures) to ``dest``; return the OBJ path.

    A furniture library keeps each model in its own folder, which is copied
    whole. The jar keeps all default models in one folder, so only the OBJ,
    its ``mtllib`` files and their texture maps are taken; an OBJ without
    ``mtllib`` gets the jar's built-in material library written beside it (and
    an ``mtllib`` line), so its colours survive outside Sweet Home 3D.
    """
    zpath = archive_path(libdir, model)
    obj_rel = PurePosixPath(model.model_path)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / obj_rel.name
    try:
        with zipfile.ZipFile(zpath) as zf:
            if model.source.startswith(CATALOG_PACKAGE + ":"):
                _extract_referenced(zf, obj_rel, dest)
            else:
                for info in zf.infolist():
                    rel = _safe_member(info.filename, obj_rel.parent)
                    if info.is_dir() or rel is None or len(rel.parts) != 1:  # only the model's own folder
                        continue
                    (dest / rel.name).write_bytes(zf.read(info))
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataFetchError(f"{zpath}: cannot read the library ({exc})") from None
    if not out.is_file():
        raise DataFetchError(f"{zpath}: {model.model_path} not found in the library")
    return out


def _extract_referenced(zf: zipfile.ZipFile, obj_rel: PurePosixPath, dest: Path) -> None:
    names = set(zf.namelist())
    if str(obj_rel) not in names:
        return
    obj = zf.read(str(obj_rel))
    lines = obj.decode("latin-1").splitlines()
    mtllibs = [ln.split(None, 1)[1].strip() for ln in lines if ln.startswith("mtllib") and len(ln.split()) > 1]
    if not mtllibs:
        obj = f"mtllib {DEFAULT_MTL}\n".encode() + obj
        (dest / DEFAULT_MTL).write_text(default_materials(zf))
    (dest / obj_rel.name).write_bytes(obj)
    for lib in mtllibs:
        member = _join_member(obj_rel.parent, lib)
        if member is None or member not in names:
            continue
        text = zf.read(member)
        _write_flat(dest, lib, text)
        for ln in text.decode("latin-1").splitlines():
            parts = ln.split()
            if parts and parts[0].lower().startswith("map_") and len(parts) > 1:
                tex = _join_member(PurePosixPath(member).parent, parts[-1])
                if tex is not None and tex in names:
                    _write_flat(dest, parts[-1], zf.read(tex))


def _join_member(folder: PurePosixPath, rel: str) -> str | None:
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    return str(folder / p)


def _write_flat(dest: Path, rel: str, data: bytes) -> None:
    """Write a referenced file under ``dest`` at its relative path (checked safe by the caller)."""
    target = dest / PurePosixPath(rel.replace("\\", "/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def default_materials(zf: zipfile.ZipFile) -> str:
    """The jar's built-in MTL text (the string constant in ``OBJLoader.class`` that starts the library)."""
    try:
        data = zf.read(_OBJ_LOADER_CLASS)
    except KeyError:
        raise DataFetchError(f"{zf.filename}: {_OBJ_LOADER_CLASS} not found") from None
    i = data.find(b"newmtl ")
    # A class-file CONSTANT_Utf8 is: tag 1, u2 big-endian length, bytes.
    if i < 3 or data[i - 3] != 1:
        raise DataFetchError(f"{zf.filename}: no material library in {_OBJ_LOADER_CLASS}")
    n = int.from_bytes(data[i - 2 : i], "big")
    return data[i : i + n].decode("utf-8", errors="replace")


def extract_icon(libdir: Path, model: Sh3dModel, dest_file: Path) -> Path:
    """Extract the catalogue icon (a photo-like product rendering) of a model."""
    zpath = archive_path(libdir, model)
    try:
        with zipfile.ZipFile(zpath) as zf:
            data = zf.read(model.icon_path)
    except KeyError:
        raise DataFetchError(f"{zpath}: icon {model.icon_path} not found") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataFetchError(f"{zpath}: cannot read the library ({exc})") from None
    atomic_write_bytes(dest_file, data)  # a killed build never leaves a truncated icon to be reused
    return dest_file


def notice_text(models: list[Sh3dModel]) -> str:
    """Credits for the models used (CC-BY requires naming the creator)."""
    lines = [
        "3D models from Debian's sweethome3d-furniture package (Sweet Home 3D furniture libraries)",
        "and the default catalogue of Debian's sweethome3d package (sweethome3d.jar).",
        "Licences: CC0 (BlendSwap-CC-0), Creative Commons Attribution 3.0 (the other libraries),",
        "GNU GPL 2+ or CC-BY 3.0 at your choice (the default catalogue, (c) Emmanuel Puybaret / eTeks).",
        "Models used here (name - creator - licence):",
    ]
    for m in sorted(models, key=lambda m: (m.library, m.catalog_id)):
        lines.append(f"  {m.name} ({m.library} #{m.catalog_id}) - {m.creator or 'unknown'} - {m.license}")
    return "\n".join(lines) + "\n"
