"""Train, export and serve agree on preprocessing and rendering (one constants module)."""

from __future__ import annotations

import json

import pytest

from ftspl.engine import constants as C
from ftspl.engine.constants import RenderSpec
from ftspl.engine.model.encoders import Encoders
from ftspl.engine.model.manifest import ModelManifest


def test_render_spec_hash_is_stable_and_sensitive():
    a, b = RenderSpec(), RenderSpec()
    assert a.digest() == b.digest()
    assert RenderSpec.from_dict(json.loads(json.dumps(a.to_dict()))).digest() == a.digest()
    for change in (dict(up="z"), dict(views=6), dict(elevation_deg=20.0), dict(image_size=112), dict(background_rgb=(0, 0, 0))):
        assert RenderSpec(**change).digest() != a.digest(), change


def test_defaults_follow_the_paper():
    s = RenderSpec()
    assert (s.views, s.azimuth_step_deg, s.elevation_deg, s.image_size) == (12, 30.0, 30.0, 224)
    assert s.views * s.azimuth_step_deg == 360
    assert C.EMBED_DIM == 256


def test_manifest_carries_the_constants(model_home):
    """The exported manifest holds exactly what the trainer uses, and the engine reads it."""
    torch = pytest.importorskip("torch")
    from ftspl.train.backbone_registry import get_spec

    model_dir = (model_home / "models" / (model_home / "models" / "ACTIVE").read_text().strip())
    man = ModelManifest.load(model_dir)
    assert man.views == C.VIEWS and man.image_size == C.IMAGE_SIZE
    from dataclasses import replace

    from ftspl.train.config import TrainConfig

    spec = replace(RenderSpec(), look=TrainConfig.look)  # export --pretrained serves the product's look
    assert man.get_render_spec() == spec and man.render_spec_hash == spec.digest()
    assert man.get_preprocess() == get_spec(man.backbone).preprocess
    assert man.embed_dim == get_spec(man.backbone).feat_dim
    enc = Encoders(model_dir)
    assert enc.preprocess == get_spec(man.backbone).preprocess
    del torch


def test_unknown_backbone_lists_valid():
    pytest.importorskip("torch")
    from ftspl.engine.errors import UnknownKeyError
    from ftspl.train.backbone_registry import get_spec

    with pytest.raises(UnknownKeyError, match="valid: alexnet, efficientnet_lite0"):
        get_spec("resnet9000")


def test_tampered_model_is_refused(model_home):
    from ftspl.engine.errors import ModelError

    model_dir = model_home / "models" / (model_home / "models" / "ACTIVE").read_text().strip()
    onnx_file = model_dir / "image_encoder.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        Encoders(model_dir).session("image_encoder")
