"""``ftspl doctor``: one line per check of what a query and an add depend on."""

from __future__ import annotations

import numpy as np

from ftspl.engine.errors import FtsplError
from ftspl.engine.home import Home


def run_checks(home: Home, device: str = "auto") -> list[tuple[str, bool, str]]:
    """[(check, ok, detail)] for the GL stack, onnxruntime, the model and the index."""
    results: list[tuple[str, bool, str]] = []

    try:
        from ftspl.engine.render import render_reference

        views = render_reference()
        nonwhite = float(np.mean(views.min(axis=-1) < 250))
        ok = 0.01 < nonwhite < 0.95
        results.append(("render", ok, f"{views.shape[0]} views of the reference mesh, {nonwhite:.0%} of pixels drawn"))
    except FtsplError as exc:
        results.append(("render", False, str(exc)))

    import onnxruntime as ort

    prov = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
    results.append(("onnxruntime", True, f"version {ort.__version__}, providers {', '.join(prov)}"))

    model_ok = False
    try:
        from ftspl.engine.encoders import Encoders, RuntimeConfig

        enc = Encoders(home.active_model_dir(), RuntimeConfig(device=device))
        active = enc.active_providers()
        results.append(("model", True, f"{enc.manifest.model_id} ({enc.manifest.embed_dim}-d), running on {active[0]}"))
        model_ok = True
    except FtsplError as exc:
        results.append(("model", False, str(exc)))

    if model_ok:
        from ftspl.engine.verify import verify_index

        try:
            problems, facts = verify_index(home)
        except FtsplError as exc:
            problems, facts = [str(exc)], {}
        if problems and problems[0].endswith("no index yet"):
            results.append(("index", True, f"{home.index_dir}: empty (run 'ftspl index add FOLDER')"))
        else:
            results.append(("index", not problems, "; ".join(problems) or ", ".join(f"{k} {v}" for k, v in facts.items())))
    return results
