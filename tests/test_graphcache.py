"""The per-machine cache of optimised onnxruntime graphs: same outputs, never trusted blindly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftspl.engine.model.encoders import IMAGE_ENCODER, Encoders
from ftspl.engine.model.graphcache import GraphCache


def _model_dir(home: Path) -> Path:
    return home / "models" / (home / "models" / "ACTIVE").read_text().strip()


def _photos() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)


def test_cached_graph_gives_the_same_embeddings(model_home, tmp_path):
    model_dir, cache = _model_dir(model_home), tmp_path / "cache"
    ref = Encoders(model_dir).embed_photos(_photos())  # no cache at all
    first = Encoders(model_dir, graph_cache_dir=cache)
    out1 = first.embed_photos(_photos())  # builds the graph and stores it
    records = list(cache.glob("image_encoder-*.json"))
    assert len(records) == 1 and len(list(cache.glob("image_encoder-*.onnx"))) == 1
    second = Encoders(model_dir, graph_cache_dir=cache)
    out2 = second.embed_photos(_photos())  # loads the stored graph
    np.testing.assert_allclose(out1, ref, atol=1e-6)
    np.testing.assert_allclose(out2, ref, atol=1e-6)


def test_corrupt_cache_entry_is_rebuilt_not_used(model_home, tmp_path, caplog):
    model_dir, cache = _model_dir(model_home), tmp_path / "cache"
    ref = Encoders(model_dir, graph_cache_dir=cache).embed_photos(_photos())
    payload = next(cache.glob("image_encoder-*.onnx"))
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte in a weight: loads fine, wrong numbers
    payload.write_bytes(bytes(data))
    with caplog.at_level("INFO", logger="ftspl.engine.model.graphcache"):
        out = Encoders(model_dir, graph_cache_dir=cache).embed_photos(_photos())
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert "does not match its sha256" in caplog.text
    record = json.loads(next(cache.glob("image_encoder-*.json")).read_text())
    assert (cache / record["payload"]).exists()  # rewritten, intact again
    assert GraphCache(cache).get(next(cache.glob("image_encoder-*.json")).stem) is not None


def test_tampered_source_model_is_refused_even_with_a_cache(model_home, tmp_path):
    """The cache never bypasses the manifest's sha256 check of the exported file."""
    from ftspl.engine.errors import ModelError

    model_dir, cache = _model_dir(model_home), tmp_path / "cache"
    Encoders(model_dir, graph_cache_dir=cache).session(IMAGE_ENCODER)
    onnx_file = model_dir / "image_encoder.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        Encoders(model_dir, graph_cache_dir=cache).session(IMAGE_ENCODER)


def test_key_depends_on_model_providers_and_version(tmp_path):
    c = GraphCache(tmp_path)
    base = c.key("image_encoder", "a" * 64, ["CPUExecutionProvider"], "1.0")
    assert base == c.key("image_encoder", "a" * 64, ["CPUExecutionProvider"], "1.0")
    assert base != c.key("image_encoder", "b" * 64, ["CPUExecutionProvider"], "1.0")
    assert base != c.key("image_encoder", "a" * 64, ["CPUExecutionProvider"], "1.1")
    assert base != c.key("multiview_encoder", "a" * 64, ["CPUExecutionProvider"], "1.0")


def test_unwritable_cache_is_not_an_error(model_home, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = Encoders(_model_dir(model_home), graph_cache_dir=blocker / "cache").embed_photos(_photos())
    assert out.shape[0] == 2


def test_record_pointing_outside_the_cache_is_ignored(tmp_path):
    c = GraphCache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    (tmp_path / "evil.onnx").write_bytes(b"x")
    (tmp_path / "cache" / "k.json").write_text(json.dumps({"payload": "../evil.onnx", "sha256": "0"}))
    assert c.get("k") is None
