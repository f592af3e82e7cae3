"""Real third-party meshes: Sweet Home 3D furniture from Debian, with a curated class map.

The models come from Debian's ``sweethome3d-furniture`` package (five ``.sh3f``
zip libraries of CC0 / CC-BY 3.0 OBJ models). They are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache folder that
git ignores; nothing is committed but the class map
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

log = logging.getLogger(__name__)

FURNITURE_PACKAGE = "sweethome3d-furniture"
LIBRARY_DIR = "usr/share/sweethome3d/furniture"


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


def furniture_models() -> list[Sh3dModel]:
    """Models of the ``sweethome3d-furniture`` libraries (the default catalogue lives elsewhere)."""
    return [m for m in read_classes() if m.source.startswith(FURNITURE_PACKAGE + ":")]


def fetch_furniture(cache: Path) -> Path:
    """Download and unpack the furniture package once; return its library folder."""
    cache = Path(cache)
    libdir = cache / "root" / LIBRARY_DIR
    if libdir.is_dir() and any(libdir.glob("*.sh3f")):
        return libdir
    cache.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DataFetchError("apt-get/dpkg-deb not found: the real-mesh data comes from Debian packages")
    debs = sorted(cache.glob(f"{FURNITURE_PACKAGE}_*.deb"))
    if not debs:
        log.info("apt-get download %s", FURNITURE_PACKAGE)
        res = subprocess.run(
            ["apt-get", "download", FURNITURE_PACKAGE], cwd=cache, capture_output=True, text=True
        )
        debs = sorted(cache.glob(f"{FURNITURE_PACKAGE}_*.deb"))
        if res.returncode != 0 or not debs:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataFetchError(
                f"apt-get download {FURNITURE_PACKAGE} failed ({last}); run 'apt-get update' and retry"
            )
    res = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(cache / "root")], capture_output=True, text=True)
    if res.returncode != 0:
        raise DataFetchError(f"{debs[-1]}: dpkg-deb -x failed: {res.stderr.strip()[:200]}")
    return libdir


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
    """Extract one model's folder (OBJ, MTL, textures) to ``dest``; return the OBJ path."""
    zpath = Path(libdir) / model.library
    obj_rel = PurePosixPath(model.model_path)
    folder = obj_rel.parent
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = _safe_member(info.filename, folder)
            if rel is None or len(rel.parts) != 1:  # only the model's own folder
                continue
            (dest / rel.name).write_bytes(zf.read(info))
    out = dest / obj_rel.name
    if not out.is_file():
        raise DataFetchError(f"{zpath}: {model.model_path} not found in the library")
    return out


def extract_icon(libdir: Path, model: Sh3dModel, dest_file: Path) -> Path:
    """Extract the catalogue icon (a photo-like product rendering) of a model."""
    zpath = Path(libdir) / model.library
    with zipfile.ZipFile(zpath) as zf:
        try:
            data = zf.read(model.icon_path)
        except KeyError:
            raise DataFetchError(f"{zpath}: icon {model.icon_path} not found") from None
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    dest_file.write_bytes(data)
    return dest_file


def notice_text(models: list[Sh3dModel]) -> str:
    """Credits for the models used (CC-BY requires naming the creator)."""
    lines = [
        "3D models from Debian's sweethome3d-furniture package (Sweet Home 3D furniture libraries).",
        "Licences: CC0 (BlendSwap-CC-0) and Creative Commons Attribution 3.0 (the others).",
        "Models used here (name - creator - licence):",
    ]
    for m in sorted(models, key=lambda m: (m.library, m.catalog_id)):
        lines.append(f"  {m.name} ({m.library} #{m.catalog_id}) - {m.creator or 'unknown'} - {m.license}")
    return "\n".join(lines) + "\n"
