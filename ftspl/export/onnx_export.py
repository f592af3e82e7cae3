"""torch encoders -> ONNX files + manifest, refused unless onnxruntime agrees with torch.

The export is staged in a temporary folder inside ``models/`` and renamed into
place only after the parity check passes, so a failed export never leaves a
half-written model behind and never changes which model is active.

``precision`` other than fp32 converts each checked fp32 graph with
:mod:`ftspl.export.precision` (int8: calibrated on the run's own photos and
rendered shapes, :mod:`ftspl.export.calibration`; fp16: for GPUs) before the
manifest is written; the manifest records the precision and, for int8, the
calibration set's digest, which are part of the model's identity.

Two exporters are offered: ``dynamo`` (torch.export + onnxscript, PyTorch's
supported path, the default) and ``torchscript`` (the legacy tracer: 20x faster
to run, used by fast tests). Both produce a graph with a dynamic batch axis.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import FtsplError, UnknownKeyError
from ftspl.engine.files import sha256_file
from ftspl.engine.home import Home
from ftspl.engine.model.manifest import (
    IMAGE_ENCODER,
    LEGACY_LOOK,
    MANIFEST_NAME,
    MULTIVIEW_ENCODER,
    EncoderFile,
    ModelManifest,
)
from ftspl.engine.scoring.regions import GRAPH_SCALES, grid_cells
from ftspl.version import __version__ as FTSPL_VERSION

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")


class ExportError(FtsplError):
    """torch.onnx could not export an encoder."""


class ExportParityError(FtsplError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``ftspl export``."""

    exporter: str = "dynamo"
    opset: int = 18
    parity_tol: float = 1e-4
    parity_batch: int = 2
    seed: int = 0
    #: the multi-view graph also outputs each view's embedding (``VIEW_OUTPUT``), which the
    #: index stores compactly to say which view of a hit matched the photo
    view_embeddings: bool = True
    #: fp32, int8 (CPU; calibrated), fp16 (GPU) or auto (:func:`ftspl.export.precision.resolve_precision`)
    precision: str = "fp32"
    #: int8: a folder of photos and meshes to calibrate on instead of the run's own source and target
    calibration: Path | None = None
    calibration_photos: int = 64
    calibration_shapes: int = 16
    #: the image graph also outputs embeddings of windows of its last feature map (``REGION_OUTPUT``,
    #: ``--regions rmac``), for backbones that expose one; ``region_scales``: the windows' scales
    region_embeddings: bool = True
    region_scales: tuple[float, ...] = GRAPH_SCALES


VIEW_OUTPUT = "view_embeddings"
REGION_OUTPUT = "region_embeddings"


class WithViewEmbeddings(torch.nn.Module):
    """A multi-view encoder whose graph returns ``(pooled (B, D), per-view (B, V, D))``.

    The pooled output is the encoder's own forward, unchanged; each view's
    embedding goes through the same head and L2 normalisation, so it lives in
    the photos' embedding space (views are compared with photos directly).
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        feats = enc.backbone.features(x.flatten(0, 1))  # (B*V, F), computed once for both outputs
        per_view = feats.reshape(x.shape[0], -1, feats.shape[-1])
        pooled = enc._finish(per_view.amax(dim=1))
        views = enc._finish(feats).reshape(x.shape[0], -1, pooled.shape[-1])
        return pooled, views


class WithRegionEmbeddings(torch.nn.Module):
    """An image encoder whose graph returns ``(whole photo (B, D), regions (B, R, D))``.

    The whole-photo output is the encoder's own forward (the backbone's mean
    over its last feature map, then the head); each region averages the same
    map over a window of cells and goes through the same head and L2
    normalisation (R-MAC-like regional pooling, one forward pass).
    """

    def __init__(self, encoder: torch.nn.Module, cells: list[tuple[int, int, int, int]]) -> None:
        super().__init__()
        self.encoder = encoder
        self.cells = [tuple(int(v) for v in c) for c in cells]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        fmap = enc.backbone.feature_map(x)  # (B, C, h, w), computed once for both outputs
        whole = enc._finish(fmap.mean(dim=(2, 3)))
        parts = torch.stack([fmap[:, :, y0:y1, x0:x1].mean(dim=(2, 3)) for x0, y0, x1, y1 in self.cells], dim=1)
        regions = enc._finish(parts.flatten(0, 1)).reshape(x.shape[0], len(self.cells), whole.shape[-1])
        return whole, regions


def region_module(encoder: torch.nn.Module, size: int, scales) -> tuple[torch.nn.Module, list[dict]] | None:
    """The image encoder with its regional output and the windows' manifest entries, or None where its
    backbone has no feature map to pool (AlexNet's features are fully connected) or the map is one cell."""
    backbone = encoder.backbone
    if not callable(getattr(backbone, "feature_map", None)):
        return None
    with torch.no_grad():
        h, w = backbone.feature_map(torch.zeros(1, 3, size, size)).shape[-2:]
    cells = grid_cells(scales, int(w), int(h))
    if not cells:
        return None
    entries = [{"box": [round(x0 / w, 6), round(y0 / h, 6), round(x1 / w, 6), round(y1 / h, 6)], "scale": s}
               for (x0, y0, x1, y1), s in cells]
    return WithRegionEmbeddings(encoder, [c for c, _ in cells]).eval(), entries


@dataclass
class ModelMeta:
    """What the manifest says about the model beyond its files."""

    backbone: str
    embed_dim: int
    preprocess: Preprocess
    render_spec: RenderSpec
    source: str
    class_names: list[str]
    training: dict
    metrics: dict
    #: the model's own data: ``photos`` and ``shapes`` folders (a run's source and target), int8's calibration
    data: dict = field(default_factory=dict)


def _export_one(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, cfg: ExportConfig,
                outputs: tuple[str, ...] = ("embedding",)) -> None:
    module = module.eval()
    if cfg.exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[input_name],
                output_names=list(outputs),
                dynamic_shapes=({0: batch},),
                opset_version=cfg.opset,
                verbose=False,
            )
            prog.save(str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=[input_name],
                output_names=list(outputs),
                dynamic_axes={input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                opset_version=min(cfg.opset, 17),
            )


def _parity(module: torch.nn.Module, path: Path, input_name: str, examples: list[torch.Tensor],
            outputs: tuple[str, ...] = ("embedding",)) -> float:
    """Max abs difference between torch and onnxruntime over the example batches (every output)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.no_grad():
        for x in examples:
            refs = module(x)
            refs = refs if isinstance(refs, tuple) else (refs,)
            for name, ref, got in zip(outputs, refs, sess.run(list(outputs), {input_name: x.numpy()})):
                ref = ref.float().numpy()
                if got.shape != ref.shape:
                    raise ExportParityError(f"{path}: onnxruntime {name} shape {got.shape} != torch {ref.shape}")
                worst = max(worst, float(np.max(np.abs(got - ref))))
    return worst


def _calibration(meta: ModelMeta, home: Home, cfg: ExportConfig):
    """The int8 calibration set: ``cfg.calibration``'s photos and meshes, else the run's source and target."""
    from ftspl.export.calibration import build_calibration, calibration_sources
    from ftspl.export.precision import CALIBRATION_METHOD

    if cfg.calibration is not None:
        photos, shapes = calibration_sources(cfg.calibration, cfg.calibration, "--calibration")
    else:
        data = meta.data or {}
        photos, shapes = calibration_sources(*(Path(data[k]) if data.get(k) else None for k in ("photos", "shapes")),
                                             "--calibration")
    log.info("int8 calibration: photos from %s, shapes from %s", photos, shapes)
    return build_calibration(photos, shapes, meta.preprocess, meta.render_spec, home.cache / "views",
                             cfg.calibration_photos, cfg.calibration_shapes, CALIBRATION_METHOD)


def _reduce(precision: str, path: Path, input_name: str, outputs: tuple[str, ...], batches) -> dict | None:
    """Replace the fp32 graph at ``path`` by its ``precision`` twin; the check of the twin against it."""
    from ftspl.export.precision import reduce_encoder

    reduced = path.with_suffix(f".{precision}.onnx")
    batches = [b.numpy() if isinstance(b, torch.Tensor) else b for b in batches]
    log.info("converting %s to %s", path.stem, precision)
    check = reduce_encoder(precision, path, reduced, input_name, outputs, batches)
    os.replace(reduced, path)
    return check


def export_encoders(
    image_encoder: torch.nn.Module,
    multiview_encoder: torch.nn.Module,
    meta: ModelMeta,
    home: Home,
    cfg: ExportConfig = ExportConfig(),
    activate: bool = True,
) -> tuple[Path, ModelManifest]:
    """Export both encoders, check parity, write the manifest, make the model active."""
    if cfg.exporter not in EXPORTERS:
        raise UnknownKeyError("exporter", cfg.exporter, EXPORTERS)
    from dataclasses import replace

    from ftspl.export.precision import resolve_precision

    cfg = replace(cfg, precision=resolve_precision(cfg.precision, meta.data, cfg.calibration))
    calib = _calibration(meta, home, cfg) if cfg.precision == "int8" else None  # bad data fails before the export
    image_encoder = image_encoder.eval().cpu()
    multiview_encoder = multiview_encoder.eval().cpu()
    pre, spec = meta.preprocess, meta.render_spec
    s, v = pre.image_size, spec.views
    gen = torch.Generator().manual_seed(cfg.seed)
    img_examples = [torch.randn(n, 3, s, s, generator=gen) for n in (cfg.parity_batch, 1)]
    mv_examples = [torch.randn(n, v, 3, s, s, generator=gen) for n in (cfg.parity_batch, 1)]

    home.models.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=home.models))
    try:
        files: dict[str, EncoderFile] = {}
        checks: dict[str, dict | None] = {}
        worst = 0.0
        mv_outputs = ("embedding", VIEW_OUTPUT) if cfg.view_embeddings else ("embedding",)
        mv_module = WithViewEmbeddings(multiview_encoder).eval() if cfg.view_embeddings else multiview_encoder
        regional = region_module(image_encoder, s, cfg.region_scales) if cfg.region_embeddings else None
        img_module, img_outputs = (image_encoder, ("embedding",)) if regional is None else \
            (regional[0], ("embedding", REGION_OUTPUT))
        for name, module, examples, input_name, shape, outputs in (
            (IMAGE_ENCODER, img_module, img_examples, "images", ["batch", 3, s, s], img_outputs),
            (MULTIVIEW_ENCODER, mv_module, mv_examples, "views", ["batch", v, 3, s, s], mv_outputs),
        ):
            path = stage / f"{name}.onnx"
            log.info("exporting %s (%s exporter)", name, cfg.exporter)
            try:
                _export_one(module, examples[0], path, input_name, cfg, outputs)
            except (RuntimeError, TypeError, ValueError) as exc:  # torch.onnx's errors derive from these
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise ExportError(f"{name}: torch.onnx.export failed ({first}); try --exporter torchscript") from exc
            diff = _parity(module, path, input_name, examples, outputs)
            log.info("%s parity: max abs diff %.3g", name, diff)
            if not diff <= cfg.parity_tol:
                raise ExportParityError(
                    f"{name}: onnxruntime differs from torch by {diff:.3g} > {cfg.parity_tol:g}; "
                    "model not exported (try --exporter torchscript)"
                )
            worst = max(worst, diff)
            if cfg.precision != "fp32":
                checks[name] = _reduce(cfg.precision, path, input_name, outputs,
                                       examples if calib is None else
                                       calib.photo_batches() if name == IMAGE_ENCODER else calib.view_batches())
            files[name] = EncoderFile(
                path=path.name,
                sha256=sha256_file(path),
                input_name=input_name,
                input_shape=shape,
                output_name="embedding",
                view_output_name=VIEW_OUTPUT if name == MULTIVIEW_ENCODER and len(outputs) > 1 else None,
                region_output_name=REGION_OUTPUT if name == IMAGE_ENCODER and len(outputs) > 1 else None,
                regions=regional[1] if name == IMAGE_ENCODER and regional is not None else None,
            )
        manifest = ModelManifest(
            model_id="",
            backbone=meta.backbone,
            embed_dim=int(meta.embed_dim),
            views=v,
            image_size=s,
            preprocess=pre.to_dict(),
            render_spec=spec.to_dict(),
            render_spec_hash=spec.digest(),
            encoders=files,
            source=meta.source,
            class_names=list(meta.class_names),
            training=meta.training,
            metrics=meta.metrics,
            parity_max_abs_diff=worst,
            precision=cfg.precision,
            calibration=None if calib is None else calib.record,
            precision_check=checks or None,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            ftspl_version=FTSPL_VERSION,
        )
        tag = {"pretrained": "pretrained", "random-init": "random"}.get(meta.source, "ftspl")
        if manifest.look != LEGACY_LOOK:
            tag = f"{tag}-{manifest.look}"
        if cfg.precision != "fp32":
            tag = f"{tag}-{cfg.precision}"
        manifest.model_id = f"{meta.backbone}-{tag}-{manifest.model_hash[:12]}"
        (stage / MANIFEST_NAME).write_text(manifest.to_json())
        final = home.model_dir(manifest.model_id)
        if final.exists():
            shutil.rmtree(final)  # same hash: identical content, replace it
        os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if activate:
        home.set_active(manifest.model_id)
    return final, manifest
