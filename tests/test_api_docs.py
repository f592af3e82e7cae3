"""docs/API.md's examples run: every ``python`` block, in order, in one fresh interpreter.

They run as a notebook or ``python -c`` runs them (no main script file: see the
doc's note on ``if __name__ == "__main__":`` for scripts). The folder they run in holds ``meshes/`` (two labelled folders of tiny meshes) and
``photo.jpg``, and ``FTSPL_HOME`` is a home with the exported model and no index,
as after ``ftspl export``. Blocks fenced as ``text`` are shown, not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_blocks_are_found_and_the_first_is_five_lines() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 6
    first = [ln for ln in blocks[0].splitlines() if ln.strip()]
    assert first[0] == "import ftspl" and len(first) == 5


def test_every_python_block_of_the_api_doc_runs(tmp_path: Path, model_home: Path) -> None:
    for label, meshes in {"chair": [trimesh.creation.box((1, 2, 1)), trimesh.creation.box((1, 3, 1))],
                          "table": [trimesh.creation.box((3, 1, 2)), trimesh.creation.cylinder(1.0, 0.5)]}.items():
        for i, mesh in enumerate(meshes):
            p = tmp_path / "meshes" / label / f"{label}_{i}.ply"
            p.parent.mkdir(parents=True, exist_ok=True)
            mesh.export(p)
    img = np.full((160, 200, 3), 255, np.uint8)
    img[40:120, 70:130] = (120, 80, 40)
    Image.fromarray(img).save(tmp_path / "photo.jpg")
    blocks = python_blocks(DOC.read_text())
    script = (
        f"blocks = {blocks!r}\n"
        "for i, code in enumerate(blocks, 1):\n"
        "    print(f'--- block {i}', flush=True)\n"
        "    exec(compile(code, f'docs/API.md python block {i}', 'exec'), {'__name__': '__main__'})\n"
        "print('--- all blocks ran')\n"
    )
    env = dict(os.environ, FTSPL_HOME=str(model_home), PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.rstrip().endswith("--- all blocks ran")
    assert "chair" in r.stdout and "box is X0,Y0,X1,Y1" in r.stdout  # the examples printed what they say
