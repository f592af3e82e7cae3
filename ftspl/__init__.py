"""ftspl: find 3D shapes from a photo (FTSPL training, ONNX serving).

Five lines of Python (docs/API.md)::

    import ftspl
    lib = ftspl.open()                      # the home: $FTSPL_HOME or ./.ftspl
    lib.add("meshes/")                      # index every mesh under the folder
    for hit in lib.query("photo.jpg", top=5).hits:
        print(hit.rank, hit.path, hit.label, round(hit.distance, 3))

``ftspl.train(...)`` and ``ftspl.export(...)`` need the ``[train]`` extra. Importing
``ftspl`` is cheap and never imports PyTorch: the API modules load on first use.
"""

from __future__ import annotations

import importlib as _importlib
import types as _types
from typing import Any

from ftspl.version import __version__


def open(home=None, device: str = "auto", threads: int = 0):  # noqa: A001 - ftspl.open, as the docs say
    """The shape library of ``home`` (None: ``$FTSPL_HOME`` or ``./.ftspl``): see :class:`ftspl.api.Library`."""
    from ftspl.api import Library

    return Library(home, device=device, threads=threads)


class _CallablePackage(_types.ModuleType):
    """``ftspl.train`` and ``ftspl.export`` are sub-packages and also the API functions of the same name.

    Importing ``ftspl.train.loop`` rebinds ``ftspl.train`` to the sub-package, so a
    plain function in this module would vanish after the first such import; the
    sub-packages themselves are made callable instead (their ``__init__`` holds a
    docstring only, so this costs nothing and imports no torch).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ftspl import modelling

        return getattr(modelling, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


for _name in ("train", "export"):
    _importlib.import_module(f"{__name__}.{_name}").__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    """``ftspl.Library`` and the result records, loaded on first use."""
    if name == "Library":
        from ftspl.api import Library

        return Library
    import ftspl.results as _results

    if name in _results.__all__:
        return getattr(_results, name)
    raise AttributeError(f"module 'ftspl' has no attribute {name!r}")


__all__ = ["Library", "__version__", "export", "open", "train"]
