"""Reduced-precision encoders: ``ftspl export --precision int8|fp16``, the manifest's identity, the engine's refusals.

Fast tests use a tiny convolution graph; the slow one exports the pretrained
EfficientNet-Lite0 at int8 (calibrated on a few photos and meshes) into a home
whose index was built at fp32, and checks that the index refuses it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ftspl.engine.errors import DeviceError, ModelError, UnknownKeyError, UsageError
from ftspl.engine.files import sha256_file
from ftspl.engine.model.manifest import MANIFEST_NAME, EncoderFile, ModelManifest

from conftest import make_gallery, run_ftspl


def _manifest(precision: str = "fp32", digest: str | None = None, sha: str = "a" * 64) -> ModelManifest:
    from ftspl.engine.constants import RenderSpec

    spec = RenderSpec()
    enc = {n: EncoderFile(f"{n}.onnx", sha, "images", ["batch", 3, 8, 8], "embedding")
           for n in ("image_encoder", "multiview_encoder")}
    return ModelManifest(model_id="m", backbone="b", embed_dim=4, views=12, image_size=8,
                         preprocess={"image_size": 8, "crop_pct": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]},
                         render_spec=spec.to_dict(), render_spec_hash=spec.digest(), encoders=enc, source="pretrained",
                         precision=precision, calibration=None if digest is None else {"digest": digest})


def test_model_identity_includes_precision_and_calibration():
    fp32 = _manifest()
    # an fp32 model hashes its files only, as before precisions existed: earlier indexes stay bound to it
    h = hashlib.sha256()
    for name in sorted(fp32.encoders):
        h.update(name.encode())
        h.update(fp32.encoders[name].sha256.encode())
    assert fp32.model_hash == h.hexdigest()
    int8 = _manifest("int8", "c1")
    assert int8.model_hash != fp32.model_hash
    assert _manifest("int8", "c2").model_hash != int8.model_hash  # another calibration set: another model
    assert _manifest("fp16").model_hash not in (fp32.model_hash, int8.model_hash)


def test_manifest_round_trip_and_unknown_precision(tmp_path):
    man = _manifest("int8", "c1")
    (tmp_path / MANIFEST_NAME).write_text(man.to_json())
    back = ModelManifest.load(tmp_path)
    assert (back.precision, back.calibration, back.model_hash) == ("int8", {"digest": "c1"}, man.model_hash)
    old = json.loads(man.to_json())
    for k in ("precision", "calibration", "precision_check"):
        old.pop(k)
    old["model_hash"] = _manifest().model_hash  # a manifest written before precisions existed: fp32
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(old))
    assert ModelManifest.load(tmp_path).precision == "fp32"
    bad = json.loads(man.to_json())
    bad["precision"] = "int4"
    bad.pop("model_hash")
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(bad))
    with pytest.raises(ModelError, match="unknown precision 'int4'"):
        ModelManifest.load(tmp_path)


def test_check_precision_names_the_flag():
    from ftspl.export.precision import check_precision

    assert check_precision("int8") == "int8"
    with pytest.raises(UnknownKeyError, match=r"--precision 'int4'; valid: auto, fp16, fp32, int8"):
        check_precision("int4")


def test_auto_is_int8_on_a_cpu_with_calibration_data_else_fp32(tmp_path, monkeypatch):
    from ftspl.engine.model import cuda
    from ftspl.export.precision import resolve_precision

    monkeypatch.setattr(cuda, "cuda_usable", lambda: False)
    run_data = {"photos": str(tmp_path), "shapes": str(tmp_path)}
    assert resolve_precision("auto", run_data, None) == "int8"
    assert resolve_precision("auto", {}, None) == "fp32"  # --pretrained without --calibration
    assert resolve_precision("auto", {}, tmp_path) == "int8"
    assert resolve_precision("auto", {"photos": str(tmp_path / "gone"), "shapes": str(tmp_path)}, None) == "fp32"
    assert resolve_precision("fp16", {}, None) == "fp16"
    monkeypatch.setattr(cuda, "cuda_usable", lambda: True)
    assert resolve_precision("auto", run_data, None) == "fp32"  # a GPU machine keeps fp32


def test_calibration_sources_name_the_flag(tmp_path):
    from ftspl.export.calibration import calibration_sources

    with pytest.raises(UsageError, match=r"needs calibration photos: no folder of photos; pass --calibration DIR"):
        calibration_sources(None, tmp_path, "--calibration")
    with pytest.raises(UsageError, match=r"calibration shapes: .*missing is not a folder; pass --calibration DIR"):
        calibration_sources(tmp_path, tmp_path / "missing", "--calibration")


def test_spread_takes_classes_in_turn():
    from ftspl.export.calibration import spread

    items = ["a/1", "a/2", "a/3", "b/1", "c/1", "c/2"]
    assert spread(items, lambda s: s[0]) == ["a/1", "b/1", "c/1", "a/2", "c/2", "a/3"]


# -- the tiny graph --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """conv -> ReLU6 -> depthwise conv -> ReLU6 -> pool -> L2 norm, as EfficientNet-Lite's blocks, in ONNX."""
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.c = torch.nn.Conv2d(8, 16, 1)
            for m in (self.a, self.b, self.c):
                m.weight.data = torch.randn(m.weight.shape, generator=g) * 0.3
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1

        def forward(self, x):
            x = torch.nn.functional.relu6(self.a(x))
            x = torch.nn.functional.relu6(self.b(x))
            x = self.c(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(x, dim=1)

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, input_names=["images"],
                      output_names=["embedding"], dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
                      opset_version=17)
    return path


def _batches(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32) for _ in range(n)]


def test_int8_is_static_qdq_per_channel_and_close(tiny_onnx, tmp_path):
    onnx = pytest.importorskip("onnx")
    from ftspl.export.precision import reduce_encoder

    out = tmp_path / "int8.onnx"
    check = reduce_encoder("int8", tiny_onnx, out, "images", ("embedding",), _batches())
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    before = [n.op_type for n in onnx.load(str(tiny_onnx)).graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("Conv") == 3
    assert ops.count("Clip") == before.count("Clip") - 2  # the ReLU6s folded into the conv's output range
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear"
                 and any(i.name == n.input[0] and i.data_type == onnx.TensorProto.INT8 for i in graph.initializer)]
    assert weight_dq and all(any(a.name == "axis" for a in n.attribute) for n in weight_dq)  # per-channel weights
    assert check["embedding"]["mean"] > 0.99, check


def test_fp16_keeps_fp32_inputs_and_outputs(tiny_onnx, tmp_path):
    onnx = pytest.importorskip("onnx")
    from ftspl.export.precision import convert_fp16

    out = tmp_path / "fp16.onnx"
    convert_fp16(tiny_onnx, out)
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in m.graph.initializer if i.name.endswith("weight") or len(i.dims) == 4} == {
        onnx.TensorProto.FLOAT16}


def test_engine_refuses_fp16_without_cuda(tiny_onnx, tmp_path):
    from ftspl.engine.model.encoders import Encoders, RuntimeConfig

    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("image_encoder", "multiview_encoder"):
        shutil.copy(tiny_onnx, folder / f"{name}.onnx")
    man = _manifest("fp16", sha=sha256_file(tiny_onnx))
    (folder / MANIFEST_NAME).write_text(man.to_json())
    enc = Encoders(folder, RuntimeConfig(device="cpu"))
    with pytest.raises(DeviceError, match=r"is fp16, made for GPUs.*--precision int8"):
        enc.session("image_encoder")
    from ftspl.engine.model.cuda import cuda_usable

    if not cuda_usable():
        with pytest.raises(DeviceError, match="CUDA provider cannot run here"):
            Encoders(folder, RuntimeConfig(device="auto")).session("image_encoder")


def test_engine_runs_int8_on_the_cpu_under_auto(tiny_onnx, tmp_path):
    from ftspl.engine.model.encoders import CPU, Encoders, RuntimeConfig
    from ftspl.export.precision import reduce_encoder

    folder = tmp_path / "model"
    folder.mkdir()
    reduce_encoder("int8", tiny_onnx, folder / "image_encoder.onnx", "images", ("embedding",), _batches())
    shutil.copy(folder / "image_encoder.onnx", folder / "multiview_encoder.onnx")
    man = _manifest("int8", "c", sha=sha256_file(folder / "image_encoder.onnx"))
    (folder / MANIFEST_NAME).write_text(man.to_json())
    enc = Encoders(folder, RuntimeConfig(device="auto"))
    assert enc.precision == "int8" and enc.active_providers() == [CPU]
    out = enc.embed_photos(_batches(1)[0])
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-3)


# -- the CLI ---------------------------------------------------------------------------------------
def test_export_refuses_unknown_precision_and_missing_calibration(tmp_path):
    pytest.importorskip("torch")
    r = run_ftspl(tmp_path / "h", "export", "--pretrained", "--exporter", "torchscript", "--precision", "int4")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown --precision 'int4'; valid: auto, fp16, fp32, int8" in r.stderr
    r = run_ftspl(tmp_path / "h", "export", "--pretrained", "--exporter", "torchscript", "--precision", "int8")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--precision int8 needs calibration photos" in r.stderr and "pass --calibration DIR" in r.stderr
    assert not (tmp_path / "h" / "models" / "ACTIVE").exists()


def _calibration_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    make_gallery(root / "meshes", 4)
    for i in range(6):
        p = root / "photos" / f"c{i % 2}" / f"p{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(p)
    return root


@pytest.mark.slow
def test_int8_export_and_an_fp32_index_refuses_it(model_home, tmp_path, gl_available):
    gallery = make_gallery(tmp_path / "gallery", 3)
    r = run_ftspl(model_home, "index", "add", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    fp32_id = (model_home / "models" / "ACTIVE").read_text().strip()

    cal = _calibration_folder(tmp_path / "cal")
    r = run_ftspl(model_home, "export", "--pretrained", "--exporter", "torchscript", "--precision", "int8",
                  "--calibration", str(cal), "--json")
    assert r.returncode == 0, r.stderr
    model_id = json.loads(r.stdout.strip().splitlines()[-1])["model_id"]
    assert "-int8-" in model_id and model_id != fp32_id
    man = ModelManifest.load(model_home / "models" / model_id)
    assert man.precision == "int8" and len(man.calibration["digest"]) == 64
    assert man.calibration["photos"] == 6 and man.calibration["shapes"] == 4
    assert man.preprocess == ModelManifest.load(model_home / "models" / fp32_id).preprocess  # travels with the model
    from ftspl.export.onnx_export import REGION_OUTPUT

    image_outputs = ["embedding", REGION_OUTPUT]  # the regional output (R-MAC windows) is quantized too
    for name, outputs in (("image_encoder", image_outputs), ("multiview_encoder", ["embedding", "view_embeddings"])):
        assert sorted(man.precision_check[name]) == sorted(outputs)
        assert all(v["mean"] > 0.9 for v in man.precision_check[name].values()), man.precision_check

    more = make_gallery(tmp_path / "more", 2)
    r = run_ftspl(model_home, "index", "add", str(more))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "index was built with another model" in r.stderr and fp32_id in r.stderr and model_id in r.stderr

    # the same calibration data gives the same model; a rebuilt index takes int8 shapes and answers queries
    r = run_ftspl(model_home, "index", "add", str(gallery), "--rebuild", "--json")
    assert r.returncode == 0, r.stderr
    photo = next((cal / "photos").rglob("*.png"))
    r = run_ftspl(model_home, "query", str(photo), "--top", "2", "--json")
    assert r.returncode == 0, r.stderr


def test_cuda_probe_needs_a_device_not_only_the_provider_name(monkeypatch):
    """The GPU build lists CUDA on every machine; auto takes it only with a driver, a device and loadable libraries."""
    from ftspl.engine.model import cuda

    cuda.cuda_usable.cache_clear()
    monkeypatch.setattr(cuda, "_driver_devices", lambda: 0)
    try:
        assert cuda.cuda_usable() is False
    finally:
        cuda.cuda_usable.cache_clear()
    monkeypatch.setattr(cuda, "_driver_devices", lambda: 1)
    monkeypatch.setattr(cuda, "_provider_loads", lambda ort: True)
    import onnxruntime as ort

    try:
        assert cuda.cuda_usable() is (cuda.CUDA in ort.get_available_providers())
    finally:
        cuda.cuda_usable.cache_clear()
