"""The options and helpers that several command modules share (``--home``, ``--device``, ``--json``...).

One definition of each flag, so that every command spells and explains it
the same way; imports only Typer at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

HomeOpt = typer.Option(None, "--home", help="Folder for models and index (default: $FTSPL_HOME or ./.ftspl).")
DeviceOpt = typer.Option("auto", "--device", help="onnxruntime device: auto, cpu or cuda.")
ThreadsOpt = typer.Option(0, "--threads", help="onnxruntime intra-op threads (0: all cores).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON.")


VERBOSE_HELP = "Log progress details (also accepted after the command: ftspl index add DIR -v)."
UP_HELP = "Up axis of the mesh files: y (default) or z."


def home_of(home: Optional[Path]):
    """The home folder of ``--home`` (None: ``$FTSPL_HOME`` or ``./.ftspl``)."""
    from ftspl.engine.home import Home

    return Home.resolve(home)


def runtime_of(device: str, threads: int):
    """onnxruntime's settings from ``--device`` and ``--threads``."""
    from ftspl.engine.model.encoders import RuntimeConfig

    return RuntimeConfig(device=device, intra_op_threads=threads)
