"""Every real odd or broken mesh from three Debian parser corpora goes through ``ftspl index add``.

The files come from ``assimp-testmodels``, ``libcgal-demo`` (its
``data.tar.gz``) and ``openscad-testing-data``, fetched by
:mod:`ftspl.data.broken` into the git-ignored cache. Each file must either be
indexed or be reported as one ``path: reason`` line; nothing may crash, hang
(``--file-timeout``) or leave the index inconsistent, and the exit code is 1
because some files fail. A fetch failure fails the test (CI must not skip it
silently); run ``apt-get update`` first on a machine without apt lists.

Run with ``-s`` to see the figures (files tried / indexed / failed per package).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import run_ftspl

from ftspl.engine.loading.scan import scan

FILE_TIMEOUT_S = 30

#: files whose outcome pins a defect that was found and fixed (or a refusal that must stay clear)
EXPECTED_OK = [
    "cgal-data/data/meshes/P.off",  # hexagon faces: trimesh 5 + numpy 2 raised a ufunc TypeError
    "cgal-data/data/meshes/mpi.off",
    "cgal-data/data/meshes/mesh_with_colors.off",
    "assimp/models/OFF/Wuson.off",
    "assimp/models/STL/Spider_binary.stl",
    "assimp/models/OBJ/box_UTF16BE.obj",
]
EXPECTED_FAIL = {
    "assimp/models/invalid/OutOfMemory.off": "353535235358 vertices exceed the limit",
    "assimp/models/glTF2/draco/2CylinderEngine.gltf": "Draco-compressed",
    "assimp/models/glTF2/BoxWithInfinites-glTF-Binary/BoxWithInfinites.glb": "NaN or infinite",
    "assimp/models/invalid/empty.obj": "file is empty",
    "openscad/testdata/stl/empty.stl": "file is empty",
    "cgal-data/data/points_3/kitten.off": "point cloud",
    "assimp/models/glTF/TwoBoxes/TwoBoxes.gltf": "only glTF 2.0",
    "assimp/models/glTF2/RecursiveNodes/RecursiveNodes.gltf": "cycle",
    "assimp/models/glTF2/IndexOutOfRange/AllIndicesOutOfRange.gltf": "vertex that does not exist",
}


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[Path]]:
    from ftspl.data.broken import broken_files
    from ftspl.data.sh3d import DataFetchError
    from ftspl.engine.home import Home

    root = Path(__file__).resolve().parents[1]  # the repo's home, whatever the working folder
    cache = Home.resolve(cwd=root).debian_cache
    try:
        files = broken_files(cache)
    except DataFetchError as exc:
        pytest.fail(f"cannot fetch the Debian test corpora: {exc}")
    for package, paths in files.items():
        assert paths, f"{package}: no mesh files found"
    return files


def _match(paths: set[str], suffix: str) -> str:
    # the package folders are .../usr/share/<assimp|openscad>/... or .../cgal-data/...
    parts = suffix.split("/", 1)
    hits = [p for p in paths if p.endswith("/" + parts[1]) and f"/{parts[0]}/" in p]
    assert len(hits) == 1, f"{suffix}: {hits}"
    return hits[0]


@pytest.mark.slow
def test_every_corpus_file_indexes_or_gets_one_line(model_home: Path, corpora: dict[str, list[Path]]) -> None:
    outcomes: dict[str, str] = {}  # resolved path -> "ok" or the reason
    figures = {}
    for package, files in corpora.items():
        root = Path(files[0])
        while not all(root in Path(f).parents for f in files):
            root = root.parent
        t0 = time.monotonic()
        r = run_ftspl(model_home, "index", "add", str(root), "--json", "--file-timeout", str(FILE_TIMEOUT_S),
                      "--label-from", "none", timeout=900)
        seconds = time.monotonic() - t0
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        failures = {f["path"]: f["reason"] for f in summary["failures"]}
        # exit 1 exactly when something failed
        assert r.returncode == (1 if failures else 0), r.stderr[-2000:]
        # every failure is one 'path: reason' line on stderr
        err_lines = set(r.stderr.splitlines())
        for path, reason in failures.items():
            assert "\n" not in reason and reason, (path, reason)
            assert f"{path}: {reason}" in err_lines, path
        # what ftspl reads under the folder: the mesh files, plus any folder of exactly 12 images
        # (a pre-rendered view folder; OpenSCAD's test images hold two)
        sources = scan(root, "none")
        tried = {str(s.path) for s in sources}
        assert {str(Path(f).resolve()) for f in files} <= tried
        assert set(failures) <= tried
        assert summary["added"] + summary["updated"] + summary["unchanged"] + len(failures) == len(tried)
        for p in tried:
            outcomes[p] = failures.get(p, "ok")
        figures[package] = {"mesh_files": len(files), "view_folders": sum(s.kind == "views" for s in sources),
                            "indexed": len(tried) - len(failures), "failed": len(failures),
                            "seconds": round(seconds, 1)}

    print("\nreliability corpus figures:", json.dumps(figures))
    for path, reason in sorted(outcomes.items()):
        if reason != "ok":
            print(f"  {path}: {reason}")
    paths = set(outcomes)
    for suffix in EXPECTED_OK:
        assert outcomes[_match(paths, suffix)] == "ok", suffix
    for suffix, fragment in EXPECTED_FAIL.items():
        assert fragment in outcomes[_match(paths, suffix)], (suffix, outcomes[_match(paths, suffix)])
    # no file hung or crashed the worker: those reasons mean a parser defect to look into
    assert not [p for p, r in outcomes.items() if "crashed" in r or "exited unexpectedly" in r]

    indexed = sum(f["indexed"] for f in figures.values())
    r = run_ftspl(model_home, "index", "stats", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["count"] == indexed
    r = run_ftspl(model_home, "index", "verify", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["shapes"] == indexed
