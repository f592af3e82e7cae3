"""``ftspl doctor``: one line per check of what a query and an add depend on."""

from __future__ import annotations

import re

import numpy as np

from ftspl.engine.errors import FtsplError
from ftspl.engine.home import Home


def run_checks(home: Home, device: str = "auto") -> list[tuple[str, bool, str]]:
    """[(check, ok, detail)] for the GL stack, onnxruntime, the model and the index."""
    results: list[tuple[str, bool, str]] = []

    try:
        from ftspl.engine.rendering.renderer import render_reference

        views = render_reference()
        nonwhite = float(np.mean(views.min(axis=-1) < 250))
        ok = 0.01 < nonwhite < 0.95
        results.append(("render", ok, f"{views.shape[0]} views of the reference mesh, {nonwhite:.0%} of pixels drawn"))
    except FtsplError as exc:
        results.append(("render", False, str(exc)))

    results.append(onnxruntime_check())

    model_ok = False
    try:
        from ftspl.engine.model.encoders import Encoders, RuntimeConfig

        enc = Encoders(home.active_model_dir(), RuntimeConfig(device=device))
        active = enc.active_providers()
        results.append(("model", True, f"{enc.manifest.model_id} ({enc.manifest.embed_dim}-d), running on {active[0]}"))
        model_ok = True
    except FtsplError as exc:
        results.append(("model", False, str(exc)))

    if model_ok:
        from ftspl.engine.index.library import STORE_NAME
        from ftspl.engine.index.verify import verify_index

        if not (home.index_dir / STORE_NAME).exists():
            results.append(("index", True, f"{home.index_dir}: empty (run 'ftspl index add FOLDER')"))
        else:
            try:
                problems, facts = verify_index(home)
            except FtsplError as exc:
                problems, facts = [str(exc)], {}
            results.append(("index", not problems, "; ".join(problems) or ", ".join(f"{k} {v}" for k, v in facts.items())))
    return results


#: The command that leaves exactly one onnxruntime: the GPU build (it runs on CPU too).
#: Both packages are uninstalled first: they share files, so removing only the CPU one
#: would delete part of the GPU one.
GPU_RUNTIME_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"

#: Distributions that each install the ``onnxruntime`` module; two of them clash.
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``onnxruntime_gpu`` == ``onnxruntime-gpu``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def onnxruntime_check(installed: set[str] | None = None) -> tuple[str, bool, str]:
    """The onnxruntime line: version and providers, or the CPU/GPU package clash and its fix.

    ``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime``
    module; with both present whichever was installed last wins, and CUDA
    silently falls back to the CPU. pyproject installs one of them (the GPU
    build on Linux x86_64), but a hand-made environment may hold both, so this
    line names the command that keeps only the GPU build. ``installed`` (distribution names) is for tests.
    """
    if installed is None:
        from importlib.metadata import distributions

        installed = {d.metadata["Name"] or "" for d in distributions()}
    runtimes = sorted({_normalise(n) for n in installed} & set(RUNTIME_DISTRIBUTIONS))
    if len(runtimes) > 1:
        fix = GPU_RUNTIME_FIX if "onnxruntime-gpu" in runtimes else f"pip uninstall -y {' '.join(runtimes)}, then install one"
        return ("onnxruntime", False,
                f"{' and '.join(runtimes)} are {'both' if len(runtimes) == 2 else 'all'} installed; they share one module (the last installed "
                f"wins), so {'CUDA' if 'onnxruntime-gpu' in runtimes else 'the accelerated build'} may silently "
                f"run on the CPU. Keep one: {fix}")
    try:
        import onnxruntime as ort
    except (ImportError, OSError) as exc:  # e.g. half of a package removed by hand
        return ("onnxruntime", False, f"cannot import onnxruntime ({exc}); reinstall it: pip install onnxruntime, "
                                      f"or for CUDA: {GPU_RUNTIME_FIX}")

    from ftspl.engine.model.cuda import CUDA, cuda_usable

    prov = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
    line = f"version {ort.__version__}, providers {', '.join(prov)}"
    if CUDA in prov:
        line += ("; CUDA usable here (--device auto uses it)" if cuda_usable() else
                 "; CUDA not usable here (no GPU, or its libraries do not load: pip install '.[gpu]'), "
                 "so --device auto runs on the CPU")
    return ("onnxruntime", True, line)
