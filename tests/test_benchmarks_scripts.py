"""benchmarks/: every script answers --help; scripts import only the helper modules, never each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
#: modules scripts share; a helper may import another helper, never a script
HELPERS = {"common", "studylib", "varietylib", "perflib", "peerlib", "querylib", "annlib", "protocollib", "regionlib",
           "budgetlib"}
SCRIPTS = sorted(p for p in [*BENCH.glob("*.py"), *BENCH.glob("*/*.py")] if p.stem not in HELPERS)


def _local_imports(path: Path) -> set[str]:
    """Names of benchmarks/ modules ``path`` imports anywhere (top level or in a function)."""
    local = {p.stem for p in BENCH.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "benchmarks":
                found.add(parts[1] if len(parts) > 1 else "benchmarks")
            elif parts[0] in local:
                found.add(parts[0])
    return found


def test_the_helper_list_names_real_modules() -> None:
    assert HELPERS <= {p.stem for p in BENCH.glob("*.py")}
    assert len(SCRIPTS) >= 15


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_no_script_imports_another_script(script: Path) -> None:
    bad = _local_imports(script) - HELPERS
    assert not bad, f"{script.relative_to(ROOT)} imports {sorted(bad)}: move what it needs into a helper module"


def test_helpers_import_only_helpers_and_form_no_circle() -> None:
    graph = {h: _local_imports(BENCH / f"{h}.py") for h in HELPERS}
    for h, deps in graph.items():
        assert deps <= HELPERS, f"helper {h} imports the script(s) {sorted(deps - HELPERS)}"
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 1:
            raise AssertionError(f"import circle: {' -> '.join([*path, n])}")
        if state.get(n) == 2:
            return
        state[n] = 1
        for d in sorted(graph[n] - {n}):
            visit(d, [*path, n])
        state[n] = 2

    for h in sorted(graph):
        visit(h, [])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_script_answers_help(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=180,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


# ------------------------------------------------------------------------------- helpers at work
@pytest.fixture()
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


def test_result_files_carry_command_date_and_config_and_named_entries_stay(tmp_path: Path, bench_path) -> None:
    import common

    rec = common.result_record("x.py", ["--a", "b c"], {"k": 1}, value=2)
    assert rec["command"] == "python benchmarks/x.py --a 'b c'" and rec["config"] == {"k": 1} and rec["value"] == 2
    assert rec["date"].endswith("UTC") and len(rec["git"]["commit"]) == 40
    out = tmp_path / "runs.json"
    out.write_text(json.dumps({"about": "kept", "old": {"v": 1}}))
    common.update_entry(out, "new", rec)
    data = json.loads(out.read_text())
    assert data["about"] == "kept" and data["old"] == {"v": 1} and data["new"]["value"] == 2


def test_the_ann_registry_is_read_not_named(bench_path) -> None:
    import common

    reg = common.ann()
    assert set(common.graph_backends()) == set(reg.ANN_BACKENDS) - {
        n for n, c in reg.ANN_BACKENDS.items() if c is reg.ExactIndex}
    assert reg.DEFAULT_BACKEND in common.graph_backends()


def test_ann_compare_runs_each_backend_in_its_own_workers(tmp_path: Path, bench_path) -> None:
    import annlib

    real = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    res = annlib.compare(real, 400, tmp_path, ["hnsw"], n_queries=16, efs=(32,))
    row = res["engines"][0]
    assert "error" not in row and row["sweep"][0]["recall_at_10"] > 0.9 and row["build_peak_rss_mb"] > 0


def test_figures_read_quality_exports(tmp_path: Path, bench_path) -> None:
    """figures.py finds the seed folders quality.py exports and draws from the run_cell records."""
    work = tmp_path / "figures"
    rng = np.random.default_rng(0)
    for seed in (5, 7):
        d = work / f"seed{seed}"
        d.mkdir(parents=True)
        for row in ("CNN", "FTSPL", "JAN"):
            (d / f"{row}.json").write_text(json.dumps({
                "metrics": {"AUC": 0.5}, "pr": {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 0.6, 0.3]},
                "pseudo_acc_per_round": [0.6, 0.7], "pseudo_acc_selected_per_round": [None, 0.8]}))
            np.savez_compressed(d / f"{row}.npz", query=rng.normal(size=(6, 4)), target=rng.normal(size=(9, 4)),
                                query_labels=np.array(["a", "b"] * 3), target_labels=np.array(["a", "b", "c"] * 3),
                                query_paths=np.array([f"q{i}.jpg" for i in range(6)]),
                                target_paths=np.array([f"t{i}.obj" for i in range(9)]))
    r = subprocess.run([sys.executable, str(BENCH / "figures.py"), "--work", str(work), "--out", str(tmp_path / "out"),
                        "--only", "pr,pseudo"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "pr_curves.png").stat().st_size > 0
    assert (tmp_path / "out" / "pseudo_label_accuracy.png").stat().st_size > 0
    import figures

    assert figures.seeds_in(work) == [5, 7] and figures.seeds_in(work, "7,9") == [7]
    assert figures._rows_present(work, [5, 7]) == ["CNN", "JAN", "FTSPL"]


@pytest.mark.parametrize("script", ["beyond", "matched_view"])
@pytest.mark.parametrize("seed, split", [(5, "val"), (0, "queries")])
def test_served_index_studies_refuse_a_build_of_the_other_role(tmp_path: Path, seed: int, split: str, script: str,
                                                              bench_path) -> None:
    import importlib

    from ftspl.data.protocol import manifest_record

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "manifest.json").write_text(json.dumps({"seed": seed, **manifest_record(seed)}))
    mod = importlib.import_module(script)
    with pytest.raises(SystemExit, match="cannot be used to"):
        mod.main(["--bench", str(bench), "--home", str(tmp_path / "home"), "--split", split, "--out", "none"])


def test_an_index_of_another_gallery_is_refused(tmp_path: Path, bench_path) -> None:
    import protocollib

    (tmp_path / "b" / "val_gallery" / "chair").mkdir(parents=True)
    protocollib.check_gallery([str(tmp_path / "b" / "val_gallery" / "chair" / "m.obj")], tmp_path / "b" / "val_gallery")
    with pytest.raises(SystemExit, match="must hold"):
        protocollib.check_gallery([str(tmp_path / "b" / "target" / "chair" / "m.obj")], tmp_path / "b" / "val_gallery")


def test_continue_study_refuses_tuning_seeds(bench_path) -> None:
    import continue_study

    with pytest.raises(SystemExit, match="not report seeds"):
        continue_study.main(["--seeds", "0"])


@pytest.mark.parametrize("script", ["looks", "scenes", "regions"])
def test_report_blocks_take_report_seeds_only(script: str, bench_path) -> None:
    """A study's reported-only block (``--report-seeds``) refuses a tuning seed before it builds or trains."""
    import importlib

    import protocollib

    assert protocollib.report_seeds("none") == [] and protocollib.report_seeds("5,9") == [5, 9]
    with pytest.raises(SystemExit, match="not report seeds"):
        importlib.import_module(script).main(["--seeds", "0", "--report-seeds", "5,1"])


@pytest.mark.slow
def test_perf_helpers_index_build_the_big_index_and_time_queries(model_home: Path, tmp_path: Path, bench_path,
                                                                   gl_available) -> None:
    """run.py's pieces on a tiny library: index add through the CLI, the big index built with the registry's
    default backend, warm queries in a helper-module worker process, cold query processes."""
    from conftest import make_gallery

    import perflib
    import querylib

    ours = perflib.index_ours(model_home, make_gallery(tmp_path / "g", 6))
    assert ours["meshes"] == 6 and ours["failed"] == 0
    assert len(perflib.real_embeddings(model_home)) == 6
    big = tmp_path / "big"
    info = querylib.build_big_index(model_home, big, 300)
    assert info["shapes"] == 300 and info["backend"] == "hnsw"
    photos = sorted((ROOT / "tests" / "assets").glob("*.jpg"))
    q = querylib.query_bench(big, photos[:2])
    assert q["queries"] == 10 and q["p50_ms"] > 0 and q["peak_rss_mb"] > 0
    cold = querylib.cold_query(big, photos[0])
    assert len(cold["runs_s"]) == 3 and cold["cold_query_s"] > 0
    base = querylib.Baseline(big, photos[:2])  # serve_load's long-lived in-process workers
    base.round(3)
    got = base.close()
    assert got["one_thread"]["queries"] == 3 and got["machine_scaling"]["ratio"] > 0
