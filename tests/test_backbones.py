"""Backbone registry, the EfficientNet-Lite0 port, and the two encoders.

The port is proven on real photos (tests/assets, see NOTICE): with the shipped
ImageNet weights the cat must be a cat, the coffee a coffee, the rocket a
rocket. Encoder tests use small random inputs and random-init backbones.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from ftspl.engine.constants import EMBED_DIM, Preprocess  # noqa: E402
from ftspl.engine.errors import InputFileError, UnknownKeyError  # noqa: E402
from ftspl.train.backbone_registry import BACKBONES, build_backbone, get_spec  # noqa: E402
from ftspl.train.backbones import (  # noqa: E402
    LITE0_STAGES,
    AlexNetFc7,
    EfficientNetLite0,
    SamePadConv2d,
    lite0_weights_path,
)
from ftspl.train.model import Bottleneck, Classifier, ImageEncoder, MultiViewEncoder  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
#: photo -> acceptable ImageNet classes, and whether top-1 must be one of them
#: (the rocket's top-1 wavers between "missile" and "drilling platform"; all
#: three rocket-like classes must then be in its top-5)
EXPECTED: dict[str, tuple[set[int], bool]] = {
    "chelsea": ({281, 282, 283, 284, 285}, True),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": ({967, 968, 504}, True),  # espresso, cup, coffee mug
    "rocket": ({657, 744, 812}, False),  # missile, projectile, space shuttle
}
#: every photo in tests/assets (astronaut: no ImageNet class, used for statistics)
ALL_PHOTOS = (*EXPECTED, "astronaut")
TORCHVISION_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE0_PRE = BACKBONES["efficientnet_lite0"].preprocess


def load_photo(path: Path, pre: Preprocess) -> torch.Tensor:
    """Shorter side to size/crop_pct (bicubic), centre crop, normalise -> (3, S, S)."""
    img = Image.open(path).convert("RGB")
    size = pre.image_size
    short = round(size / pre.crop_pct)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def photo_batch(pre: Preprocess, names: tuple[str, ...] = tuple(EXPECTED)) -> torch.Tensor:
    return torch.stack([load_photo(ASSETS / f"{name}.jpg", pre) for name in names])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small CPU convolutions run faster (and never contend) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    model = build_backbone("efficientnet_lite0")
    assert isinstance(model, EfficientNetLite0)
    return model


@pytest.fixture(scope="module")
def lite0_probs(lite0: EfficientNetLite0) -> torch.Tensor:
    with torch.inference_mode():
        return lite0.classify(photo_batch(LITE0_PRE)).softmax(1)


# --- the EfficientNet-Lite0 port ---------------------------------------------


def test_lite0_architecture_matches_shipped_file() -> None:
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    assert set(model.state_dict()) == set(state)
    for key, value in model.state_dict().items():
        assert value.shape == state[key].shape, key
    assert len(model._blocks) == sum(s.repeats for s in LITE0_STAGES) == 16
    # lite = ReLU6, no squeeze-excitation, no swish
    kinds = {type(m) for m in model.modules()}
    assert nn.ReLU6 in kinds and nn.SiLU not in kinds
    assert not any("_se_" in k for k in state)


@pytest.mark.parametrize("index,name", list(enumerate(EXPECTED)))
def test_lite0_imagenet_predictions(lite0_probs: torch.Tensor, index: int, name: str) -> None:
    classes, need_top1 = EXPECTED[name]
    top5 = lite0_probs[index].topk(5).indices.tolist()
    if need_top1:
        assert top5[0] in classes, f"{name}: top-5 {top5}"
        assert float(lite0_probs[index, sorted(classes)].sum()) > 0.5, f"{name}: top-5 {top5}"
    else:
        assert classes <= set(top5), f"{name}: top-5 {top5}"


def test_lite0_normalisation_matches_stem_batchnorm(lite0: EfficientNetLite0) -> None:
    """The input normalisation the weights were trained with is the one for which
    the stem conv output has the variance the stem BN recorded in training."""

    def stem_second_moment(pre: Preprocess) -> float:
        """Mean over channels of E[(out - running_mean)^2] / running_var: 1 when
        the stem BN sees inputs distributed like its training data."""
        with torch.inference_mode():
            out = lite0._conv_stem(photo_batch(pre, ALL_PHOTOS))
        bn = lite0._bn0
        alive = bn.running_var > 1e-6  # some stem channels are dead (zero variance)
        centred = (out - bn.running_mean[None, :, None, None]).square().mean(dim=(0, 2, 3))
        return float((centred[alive] / bn.running_var[alive]).mean())

    configured = stem_second_moment(LITE0_PRE)
    torchvision = stem_second_moment(replace(LITE0_PRE, mean=TORCHVISION_STATS[0], std=TORCHVISION_STATS[1]))
    assert 0.6 < configured < 1.6, configured
    assert torchvision > 3.0, torchvision  # ~(0.5/0.229)^2 too large: wrong statistics
    assert LITE0_PRE.std[0] == pytest.approx(128 / 255)


def test_lite0_tf_same_padding_beats_symmetric(lite0_probs: torch.Tensor) -> None:
    """The weights come from TensorFlow: TF "SAME" (asymmetric) padding must give
    more probability to the right classes than symmetric padding."""
    symmetric = build_backbone("efficientnet_lite0")
    for module in symmetric.modules():
        if isinstance(module, SamePadConv2d):
            module.static_padding = nn.ZeroPad2d(module.kernel_size[0] // 2)
    with torch.inference_mode():
        sym_probs = symmetric.classify(photo_batch(LITE0_PRE)).softmax(1)

    def log_right_mass(probs: torch.Tensor) -> float:
        """Sum over photos of log P(one of the photo's right classes)."""
        return sum(float(probs[i, sorted(c)].sum().log()) for i, (c, _) in enumerate(EXPECTED.values()))

    # observed: -1.56 (TF SAME) vs -1.95 (symmetric)
    assert log_right_mass(lite0_probs) > log_right_mass(sym_probs) + 0.25


def test_same_padding_keeps_even_sizes_halved() -> None:
    conv = SamePadConv2d(3, 4, 5, stride=2)
    assert conv(torch.zeros(1, 3, 64, 96)).shape[-2:] == (32, 48)
    assert conv.static_padding.padding == (1, 2, 1, 2)  # TF: one less before than after


# --- registry ----------------------------------------------------------------


def test_unknown_backbone_lists_valid_keys() -> None:
    with pytest.raises(UnknownKeyError) as info:
        build_backbone("resnet9000")
    msg = str(info.value)
    assert "resnet9000" in msg
    for key in BACKBONES:
        assert key in msg
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_dims(name: str) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, pretrained=False)
    dim = BACKBONES[name].feat_dim
    assert model.feat_dim == dim and dim > 0
    assert model.name == name == BACKBONES[name].name
    assert not model.training
    with torch.inference_mode():
        x = torch.randn(2, 3, 64, 64)
        assert model.features(x).shape == (2, dim)
        assert model(x).shape == (2, dim)
        assert model.classify(x).shape == (2, 1000)


def test_known_feature_dims() -> None:
    assert BACKBONES["efficientnet_lite0"].feat_dim == 1280 and BACKBONES["alexnet"].feat_dim == 4096


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_registry_entry_carries_its_preprocessing(name: str) -> None:
    """Each entry's input transform is complete and usable at the engine's view size."""
    from ftspl.engine.constants import IMAGE_SIZE

    pre = get_spec(name).preprocess
    assert isinstance(pre, Preprocess)
    assert pre.image_size == IMAGE_SIZE  # photos and rendered views share one input size
    assert 0 < pre.crop_pct <= 1
    assert len(pre.mean) == len(pre.std) == 3
    assert all(0 <= m <= 1 for m in pre.mean) and all(0 < s <= 1 for s in pre.std)
    assert Preprocess.from_dict(pre.to_dict()) == pre  # what the manifest stores reads back unchanged


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_pretrained_export_takes_preprocessing_from_the_entry(name: str) -> None:
    from ftspl.export.pretrained import pretrained_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # alexnet without a weights file: random init
        _img, _mv, meta = pretrained_model(name)
    assert meta.preprocess == get_spec(name).preprocess
    assert meta.training["weights"] == ("shipped" if get_spec(name).shipped_weights else "random")


def test_engine_preprocess_has_no_default() -> None:
    """The engine never falls back to built-in statistics: a model's manifest must supply them."""
    with pytest.raises(TypeError):
        Preprocess()  # type: ignore[call-arg]
    with pytest.raises(KeyError):
        Preprocess.from_dict({"image_size": 224, "crop_pct": 0.875, "mean": [0.5] * 3})


def test_alexnet_without_weights_warns_and_is_random() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        model = build_backbone("alexnet")
    assert isinstance(model, AlexNetFc7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone("alexnet", pretrained=False)  # explicit: silent


def test_alexnet_loads_state_dict_file(tmp_path: Path) -> None:
    from torchvision.models import alexnet

    torch.manual_seed(1)
    reference = alexnet(weights=None).eval()
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_backbone("alexnet", weights_path=path)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        fc7 = reference.classifier[:6](torch.flatten(reference.avgpool(reference.features(x)), 1))
        assert torch.equal(model.features(x), fc7)
        assert torch.equal(model.classify(x), reference(x))


def test_bad_weights_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        build_backbone("alexnet", weights_path=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(InputFileError, match="garbage.pth"):
        build_backbone("alexnet", weights_path=garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputFileError, match="do not fit alexnet"):
        build_backbone("alexnet", weights_path=wrong)


# --- encoders ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> tuple[ImageEncoder, MultiViewEncoder]:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    head = Bottleneck(backbone.feat_dim, EMBED_DIM)
    nn.init.normal_(head.bn.running_mean)  # non-trivial eval statistics
    head.eval()
    return ImageEncoder(backbone, head).eval(), MultiViewEncoder(backbone, head).eval()


def test_encoders_share_one_backbone_and_head(shared: tuple[ImageEncoder, MultiViewEncoder]) -> None:
    image, multi = shared
    assert image.backbone is multi.backbone and image.head is multi.head
    both = nn.ModuleList([image, multi])
    assert sum(p.numel() for p in both.parameters()) == sum(p.numel() for p in image.parameters())


def test_encoder_shapes_and_unit_norm(shared: tuple[ImageEncoder, MultiViewEncoder]) -> None:
    image, multi = shared
    with torch.inference_mode():
        e1 = image(torch.randn(3, 3, 64, 64))
        e2 = multi(torch.randn(2, 4, 3, 64, 64))
    assert e1.shape == (3, EMBED_DIM) and e2.shape == (2, EMBED_DIM)
    assert image.embed_dim == multi.embed_dim == EMBED_DIM
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(e2.norm(dim=1), torch.ones(2))


def test_view_order_does_not_matter(shared: tuple[ImageEncoder, MultiViewEncoder]) -> None:
    _, multi = shared
    torch.manual_seed(3)
    x = torch.randn(2, 5, 3, 64, 64)
    with torch.inference_mode():
        a = multi(x)
        b = multi(x[:, torch.tensor([3, 0, 4, 2, 1])])
        c = multi(x[torch.tensor([1, 0])])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(a[[1, 0]], c, atol=1e-5, rtol=0)
    assert not torch.allclose(a[0], a[1], atol=1e-3)  # different shapes differ


def test_single_view_equals_image_encoder(shared: tuple[ImageEncoder, MultiViewEncoder]) -> None:
    image, multi = shared
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(multi(x[:, None]), image(x), atol=1e-5, rtol=0)


def test_view_pooling_is_max_before_head() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=False)
    multi = MultiViewEncoder(backbone, head=None, l2_normalize=False).eval()
    image = ImageEncoder(backbone, head=None, l2_normalize=False).eval()
    x = torch.randn(2, 3, 3, 64, 64)
    with torch.inference_mode():
        per_view = torch.stack([image(x[:, v]) for v in range(3)], dim=1)
        assert multi.embed_dim == 1280
        torch.testing.assert_close(multi(x), per_view.amax(dim=1), atol=1e-5, rtol=0)
        assert not torch.allclose(per_view.amax(dim=1), per_view.mean(dim=1))


def test_outputs_are_deterministic() -> None:
    def build() -> MultiViewEncoder:
        torch.manual_seed(7)
        backbone = build_backbone("efficientnet_lite0", pretrained=False)
        return MultiViewEncoder(backbone, Bottleneck(backbone.feat_dim)).eval()

    x = torch.randn(1, 2, 3, 64, 64)
    a, b = build(), build()
    with torch.inference_mode():
        assert torch.equal(a(x), a(x))
        assert torch.equal(a(x), b(x))


def test_bottleneck_and_classifier_shapes() -> None:
    torch.manual_seed(0)
    neck = Bottleneck(1280, EMBED_DIM)
    assert isinstance(neck.act, nn.Identity)  # embedding keeps negative values
    emb = neck(torch.randn(4, 1280))  # train mode: batch statistics
    assert emb.shape == (4, EMBED_DIM) and (emb < 0).any()
    logits = Classifier(EMBED_DIM, 7)(emb)
    assert logits.shape == (4, 7)
    assert (Bottleneck(1280, 8, relu=True)(torch.randn(4, 1280)) >= 0).all()


# --- ONNX (about 3 s on one thread, so not marked slow) ---------------------


def test_encoders_export_to_onnx(tmp_path: Path, shared: tuple[ImageEncoder, MultiViewEncoder]) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    image, multi = shared
    cases = [
        (image, torch.randn(2, 3, 64, 64), {0: "batch"}, [torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)]),
        (
            multi,
            torch.randn(2, 3, 3, 64, 64),
            {0: "batch", 1: "views"},
            [torch.randn(1, 12, 3, 64, 64), torch.randn(3, 1, 3, 64, 64)],
        ),
    ]
    for i, (model, example, axes, checks) in enumerate(cases):
        path = tmp_path / f"encoder{i}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["embedding"],
                dynamic_axes={"input": axes, "embedding": {0: "batch"}},
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for x in checks:
            with torch.inference_mode():
                expected = model(x).numpy()
            got = session.run(None, {"input": x.numpy()})[0]
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
