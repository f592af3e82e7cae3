"""The look (grey or materials) through training, export, the model's identity and the index.

``TrainConfig.look`` decides the views training renders and the render spec its
run records; ``ftspl export`` carries that spec into the manifest, and a look
other than grey into the model's hash and id, so ``index add`` adopts the
model's look and an index of one look refuses a model of the other by name.
Old configs and manifests without a look read as grey.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh

from conftest import run_ftspl
from ftspl.engine.constants import LOOKS, RenderSpec
from ftspl.engine.errors import LookMismatchError, UnknownKeyError, UsageError
from ftspl.engine.model.manifest import EncoderFile, ModelManifest
from ftspl.train.config import LEGACY_LOOK, TrainConfig, validate


# --- training's config and render spec --------------------------------------------------------------
def test_the_run_renders_in_its_configs_look() -> None:
    from ftspl.train.loop import render_spec_for

    assert TrainConfig().look in LOOKS
    grey, paint = (render_spec_for(replace(TrainConfig(), look=lk)) for lk in LOOKS)
    assert grey == RenderSpec() and grey.digest() == RenderSpec().digest()  # grey keeps every cache key
    assert paint.look == "materials" and paint.wants_materials and paint.digest() != grey.digest()
    assert render_spec_for(replace(TrainConfig(), look="materials", up="z")) == RenderSpec(look="materials", up="z")
    with pytest.raises(UnknownKeyError, match="grey, materials"):
        validate(replace(TrainConfig(), look="sepia"))


def test_a_config_saved_before_looks_existed_reads_as_grey() -> None:
    saved = json.loads(TrainConfig(look="materials").to_json())
    assert TrainConfig.from_dict(saved).look == "materials"
    del saved["look"]
    assert LEGACY_LOOK == "grey" and TrainConfig.from_dict(saved).look == "grey"


def test_study_cells_of_the_grey_look_keep_their_keys() -> None:
    """benchmarks/studylib's cache key leaves ``look: grey`` out, so the tuning study's cells stay valid."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from studylib import cell_key

    cfg = TrainConfig(source="s", target="t")
    keys = {lk: cell_key("FTSPL", replace(cfg, look=lk), "tune") for lk in LOOKS}
    assert keys["grey"] != keys["materials"]

    import dataclasses

    fields = {f.name: getattr(replace(cfg, look="grey"), f.name) for f in dataclasses.fields(cfg) if f.name != "look"}
    old = dataclasses.make_dataclass("TrainConfig", list(fields))(**fields)  # a config from before the field
    assert cell_key("FTSPL", old, "tune") == keys["grey"]


# --- the manifest and the model's identity ----------------------------------------------------------
def _manifest(spec: RenderSpec) -> ModelManifest:
    enc = {n: EncoderFile(f"{n}.onnx", n * 4, "x", ["batch"], "embedding") for n in ("image_encoder", "multiview_encoder")}
    return ModelManifest(model_id="m", backbone="b", embed_dim=4, views=12, image_size=224, preprocess={},
                         render_spec=spec.to_dict(), render_spec_hash=spec.digest(), encoders=enc, source="pretrained")


def test_the_look_is_part_of_the_models_identity_and_old_manifests_read_as_grey(tmp_path: Path) -> None:
    grey, paint = _manifest(RenderSpec()), _manifest(RenderSpec(look="materials"))
    assert grey.look == "grey" and paint.look == "materials"
    assert grey.model_hash != paint.model_hash  # the same graphs served in two looks are two models
    data = json.loads(grey.to_json())
    del data["render_spec"]["look"]  # a manifest written before looks existed
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    old = ModelManifest.load(tmp_path)
    assert old.look == "grey" and old.model_hash == grey.model_hash == data["model_hash"]
    assert old.get_render_spec() == RenderSpec()
    edited = json.loads(paint.to_json())
    edited["render_spec"]["look"] = "grey"  # a look edited by hand is refused (its spec hash no longer matches)
    (tmp_path / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(Exception, match="render spec hash mismatch"):
        ModelManifest.load(tmp_path)


def test_the_look_mismatch_message_is_one_line_naming_both_looks() -> None:
    msg = str(LookMismatchError("/idx", "grey", "materials"))
    assert "\n" not in msg and msg.startswith("/idx: ")
    assert "rendered in the grey look" in msg and "renders the materials look" in msg
    assert "ftspl index reembed" in msg and "--rebuild" in msg


def test_export_refuses_an_unknown_look_before_loading_anything(tmp_path: Path) -> None:
    r = run_ftspl(tmp_path / "home", "export", "--pretrained", "--look", "sepia")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sepia" in lines[0] and "grey, materials" in lines[0], r.stderr
    assert "--look" in run_ftspl(tmp_path / "home", "train", "--help").stdout


def test_a_run_exports_only_the_look_it_trained_with(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ftspl.export.from_run import run_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(TrainConfig(look="materials").to_json())
    (run / "run.json").write_text(json.dumps({"render_spec": RenderSpec(look="materials").to_dict()}))
    with pytest.raises(UsageError) as refused:
        run_model(run, "grey")
    msg = str(refused.value)
    assert "\n" not in msg and "trained on materials views" in msg and "ftspl train --look grey" in msg


# --- end to end: train, export, index in the materials look ----------------------------------------
def _painted(path: Path, rgb: tuple[int, int, int], make) -> Path:
    mesh = make()
    mesh.visual.vertex_colors = np.tile(np.array([*rgb, 255], np.uint8), (len(mesh.vertices), 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


@pytest.fixture(scope="module")
def coloured(tmp_path_factory, gl_available) -> Path:
    """source/<class>/*.png photos (coloured renders on a backdrop); target/<class>/*.ply vertex-coloured meshes."""
    from PIL import Image

    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    root = tmp_path_factory.mktemp("coloured")
    makers = {"tall": lambda s: (lambda: trimesh.creation.box((0.5 + 0.1 * s, 2 + 0.3 * s, 0.6))),
              "round": lambda s: (lambda: trimesh.creation.icosphere(2, radius=1 + 0.1 * s))}
    colours = {"tall": (200, 40, 40), "round": (40, 60, 200)}
    rng = np.random.default_rng(0)
    with Renderer(RenderSpec(image_size=96, look="materials")) as r:
        for label, make in makers.items():
            for s in range(3):
                mesh = _painted(root / "models" / label / f"{label}{s}.ply", colours[label], make(s))
                views = r.render(normalize(load_mesh(mesh, materials=True), "y"))
                for v in (1, 5):
                    img = views[v].copy()
                    img[(img > 250).all(-1)] = rng.integers(60, 200, 3)
                    (root / "source" / label).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(root / "source" / label / f"{label}{s}_{v}.png")
            for s in range(3, 6):
                _painted(root / "target" / label / f"{label}{s}.ply", colours[label], make(s))
    return root


@pytest.mark.slow
def test_train_export_and_index_in_the_materials_look(coloured: Path, tmp_path: Path) -> None:
    """``train --look materials`` -> export (look in the manifest, id, hash) -> ``index add`` adopts it;
    the grey pretrained model then refuses that index by name, and a run refuses another look at export."""
    home = tmp_path / "home"
    run = tmp_path / "run"
    r = run_ftspl(home, "train", "--source", str(coloured / "source"), "--target", str(coloured / "target"),
                  "--out", str(run), "--look", "materials", "--rounds", "1", "--epochs", "1", "--warmup-epochs", "1",
                  "--batch-size", "4", "--augment-copies", "1", "--val-frac", "0", "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["look"] == "materials"
    assert RenderSpec.from_dict(json.loads((run / "run.json").read_text())["render_spec"]).look == "materials"

    r = run_ftspl(home, "export", str(run), "--look", "grey", "--exporter", "torchscript", "--precision", "fp32")
    assert r.returncode != 0 and "trained on materials views" in r.stderr, r.stderr[-2000:]
    r = run_ftspl(home, "export", str(run), "--exporter", "torchscript", "--precision", "fp32", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["look"] == "materials" and "-materials-" in rep["model_id"]
    man = ModelManifest.load(Path(rep["model_dir"]))
    assert man.look == "materials" and man.render_spec_hash == RenderSpec(look="materials").digest()

    r = run_ftspl(home, "index", "add", str(coloured / "target"), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads(run_ftspl(home, "index", "stats", "--json").stdout)
    assert stats["render_spec_hash"] == RenderSpec(look="materials").digest()

    r = run_ftspl(home, "export", "--pretrained", "--look", "grey", "--exporter", "torchscript", "--json")
    assert r.returncode == 0, r.stderr[-3000:]  # now the active model: grey
    for args in (("index", "add", str(coloured / "models")), ("query", str(next((coloured / "source").rglob("*.png"))))):
        r = run_ftspl(home, *args)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1, r.stderr[-2000:]
        assert "rendered in the materials look" in lines[0] and "renders the grey look" in lines[0], lines[0]


@pytest.mark.slow
def test_pretrained_exports_in_either_look_as_two_models(tmp_path: Path) -> None:
    home = tmp_path / "home"
    reps = {}
    for look in LOOKS:
        r = run_ftspl(home, "export", "--pretrained", "--look", look, "--exporter", "torchscript", "--json")
        assert r.returncode == 0, r.stderr[-3000:]
        reps[look] = json.loads(r.stdout)
    assert reps["grey"]["look"] == "grey" and reps["materials"]["look"] == "materials"
    assert reps["grey"]["model_id"] != reps["materials"]["model_id"] and "-materials-" in reps["materials"]["model_id"]
    assert {p.name for p in (home / "models").iterdir() if p.is_dir()} >= {reps[lk]["model_id"] for lk in LOOKS}
    for look in LOOKS:
        assert ModelManifest.load(Path(reps[look]["model_dir"])).get_render_spec() == RenderSpec(look=look)
