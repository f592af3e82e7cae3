"""The peer pipeline ``run.py`` compares ``ftspl index add`` with: a helper module, not a script.

trimesh + pyrender (the same 12 cameras) + the same trained encoder run eagerly
in torch + embeddings in a numpy matrix searched exactly: what a user would
glue together. pyrender is the peer only, never a dependency of ftspl
(``pip install --no-deps pyrender==0.1.45``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def index_peer(run_dir: Path, files: list[Path]) -> dict:
    """trimesh + pyrender (12 views, same cameras) + eager torch encoder + numpy matrix, one mesh at a time."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender
    except ImportError as exc:
        return {"error": f"pyrender not installed ({exc}); pip install --no-deps pyrender==0.1.45 six"}
    import torch
    import trimesh

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.rendering.renderer import camera_positions
    from ftspl.export.from_run import run_model

    spec = RenderSpec()
    _img, mv, meta = run_model(run_dir)
    pre = meta.preprocess
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    renderer = pyrender.OffscreenRenderer(spec.image_size, spec.image_size)
    eyes = camera_positions(spec)

    def look_at(eye: np.ndarray) -> np.ndarray:  # camera-to-world pose, camera looks down -Z
        z = eye / np.linalg.norm(eye)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(z, x), z, eye
        return pose

    poses = [look_at(e) for e in eyes]
    embeddings = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for f in files:
            mesh = trimesh.load(str(f), force="mesh")
            mesh.apply_translation(-mesh.bounds.mean(axis=0))
            mesh.apply_scale(spec.normalize_radius / np.linalg.norm(mesh.vertices, axis=1).max())
            scene = pyrender.Scene(bg_color=[*spec.background_rgb, 1.0], ambient_light=[0.3, 0.3, 0.3])
            material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[*spec.material_rgb, 1.0])
            scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=False))
            cam = scene.add(pyrender.PerspectiveCamera(yfov=np.radians(spec.fov_deg)), pose=poses[0])
            light = scene.add(pyrender.DirectionalLight(intensity=3.0), pose=poses[0])
            views = []
            for pose in poses:
                scene.set_pose(cam, pose)
                scene.set_pose(light, pose)
                color, _ = renderer.render(scene)
                views.append(color)
            x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
            x = (x - mean) / std
            embeddings.append(mv(x[None]).numpy()[0])
    seconds = time.perf_counter() - t0
    renderer.delete()
    gallery = np.stack(embeddings)
    q = gallery[:5]
    t = time.perf_counter()
    for v in q:  # exact numpy search, as the glue script would do it
        np.argsort(((gallery - v) ** 2).sum(1))[:10]
    return {"meshes": len(files), "seconds": round(seconds, 2), "meshes_per_s": round(len(files) / seconds, 3),
            "exact_search_ms": round((time.perf_counter() - t) / len(q) * 1000, 3),
            "torch": torch.__version__, "pyrender": getattr(pyrender, "__version__", "?")}


__all__ = ["index_peer"]
