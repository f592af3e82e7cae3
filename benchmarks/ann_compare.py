"""ANN backends side by side on N trained-like vectors: build time, bytes, peak RSS, recall@10 and speed per ef.

    python benchmarks/ann_compare.py N [--config SPEC ...] [--queries 200] [--work DIR] [--out DIR]

The same as ``python benchmarks/run.py --ann-only N [--ann-config SPEC ...]``
(``annlib.ann_only``; its docstring says how each backend is measured). The
backends are the registry's graph backends (``common.graph_backends``) unless
``--config`` names some, e.g. ``faiss-hnsw`` or ``hnsw:M=48,ef_construction=200``.
The real embeddings come from the perf home's index (``run.py``; made first
when absent). Writes ``OUT/ann_N.json`` after each backend and prints one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from annlib import ann_only
from common import RESULTS, command_line
from perflib import perf_work


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, help="vectors in each index")
    ap.add_argument("--config", action="append", metavar="SPEC", help="a backend and parameters (repeat)")
    ap.add_argument("--queries", type=int, default=200, help="queries per ef")
    ap.add_argument("--work", type=Path, default=None, help="default: <cache>/perf (run.py's)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of ann_N.json")
    args = ap.parse_args(argv)
    ann_only(args.work or perf_work(), args.n, args.out, args.config, args.queries, command_line("ann_compare.py", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
