"""The model manifest: what a pair of ONNX encoders expects and produces.

Export writes it, the engine reads it. It carries the preprocessing and render
spec the model was made with (timm's "pretrained config" idea), so the engine
never re-hardcodes them, and the sha256 of each ONNX file, so a swapped or
tampered model file is refused before onnxruntime parses it.

It also records the numeric precision of the graphs (``fp32``, ``int8``
quantised for CPUs, ``fp16`` for GPUs) and, for ``int8``, the digest of the
calibration set: both enter :attr:`ModelManifest.model_hash`, the identity an
index is bound to, so shapes encoded at one precision never join an index built
at another. So does the render spec's look (``grey`` or ``materials``): one pair
of graphs served with grey and with coloured views is two models. A manifest
written before looks existed has no ``look`` in its render spec and reads as grey.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import ModelError
from ftspl.engine.files import sha256_file

#: the look of every manifest written before render specs had one
LEGACY_LOOK = "grey"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "ftspl-model/1"
IMAGE_ENCODER = "image_encoder"
MULTIVIEW_ENCODER = "multiview_encoder"
#: numeric precisions of exported graphs; fp32 is what manifests without the field hold
PRECISIONS = ("fp32", "int8", "fp16")


@dataclass
class EncoderFile:
    path: str  #: file name inside the model folder
    sha256: str
    input_name: str
    input_shape: list  #: symbolic dims as strings, e.g. ["batch", 3, 224, 224]
    output_name: str
    #: the multi-view graph's second output, (batch, views, D) per-view embeddings; None in older models
    view_output_name: str | None = None
    #: the image graph's second output, (batch, R, D) embeddings of R windows of its last feature map
    #: (:mod:`ftspl.engine.scoring.regions`); None in older models
    region_output_name: str | None = None
    #: those windows, in output order: ``{"box": [x0, y0, x1, y1] fractions of the input square, "scale": s}``
    regions: list | None = None


@dataclass
class ModelManifest:
    model_id: str
    backbone: str
    embed_dim: int
    views: int
    image_size: int
    preprocess: dict
    render_spec: dict
    render_spec_hash: str
    encoders: dict[str, EncoderFile]
    source: str  #: "pretrained" or the training run folder
    l2_normalized: bool = True
    distance: str = "euclidean"
    class_names: list[str] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parity_max_abs_diff: float | None = None
    #: "fp32", "int8" (static QDQ quantisation, CPU) or "fp16" (GPU); see :data:`PRECISIONS`
    precision: str = "fp32"
    #: int8 only: what calibrated it (``digest`` of the inputs and settings, counts, sources, method)
    calibration: dict | None = None
    #: int8/fp16: the reduced graphs against the fp32 graphs on real inputs (cosine of the embeddings)
    precision_check: dict | None = None
    created: str = ""
    ftspl_version: str = ""
    format: str = MANIFEST_FORMAT

    @property
    def model_hash(self) -> str:
        """Hash over both encoder files, a reduced precision with its calibration, and a look other than grey:
        the identity an index is bound to.

        An fp32 grey model hashes its files only, as before precisions and looks
        existed, so the indexes of models exported earlier stay bound to them.
        """
        h = hashlib.sha256()
        for name in sorted(self.encoders):
            h.update(name.encode())
            h.update(self.encoders[name].sha256.encode())
        if self.precision != "fp32":
            h.update(f"precision:{self.precision}".encode())
            h.update(f"calibration:{(self.calibration or {}).get('digest', '')}".encode())
        if self.look != LEGACY_LOOK:
            h.update(f"look:{self.look}".encode())
        return h.hexdigest()

    @property
    def look(self) -> str:
        """How the model's gallery views are coloured (the render spec's ``look``; grey in older manifests)."""
        return str(self.render_spec.get("look", LEGACY_LOOK))

    def get_preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    def get_render_spec(self) -> RenderSpec:
        return RenderSpec.from_dict(self.render_spec)

    def to_json(self) -> str:
        data = asdict(self)
        data["model_hash"] = self.model_hash
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelManifest:
        data = dict(data)
        data.pop("model_hash", None)
        data["encoders"] = {k: EncoderFile(**v) for k, v in data["encoders"].items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, model_dir: Path) -> ModelManifest:
        path = Path(model_dir) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"{path}: no manifest; run 'ftspl export' to create the model") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable manifest ({exc}); run 'ftspl export' again") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"{path}: not an ftspl model manifest (format {MANIFEST_FORMAT} expected)")
        try:
            man = cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{path}: incomplete manifest ({exc}); run 'ftspl export' again") from None
        if man.precision not in PRECISIONS:
            raise ModelError(f"{path}: unknown precision {man.precision!r} (known: {', '.join(PRECISIONS)}); "
                             "this ftspl is older than the model, or export again")
        spec_hash = man.get_render_spec().digest()
        if spec_hash != man.render_spec_hash:
            raise ModelError(f"{path}: render spec hash mismatch; the manifest was edited, export again")
        if data.get("model_hash") not in (None, man.model_hash):
            raise ModelError(f"{path}: model hash mismatch; the manifest was edited, export again")
        return man

    def verify_file(self, model_dir: Path, name: str) -> Path:
        """Return the path of encoder ``name`` after checking its sha256."""
        if name not in self.encoders:
            raise ModelError(f"{model_dir}: manifest has no {name}; export again")
        enc = self.encoders[name]
        path = Path(model_dir) / enc.path
        if Path(enc.path).name != enc.path:
            raise ModelError(f"{model_dir}: manifest names a file outside the model folder ({enc.path!r})")
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model file ({exc.strerror or exc}); export again") from None
        if digest != enc.sha256:
            raise ModelError(f"{path}: sha256 does not match the manifest; the file was changed, export again")
        return path
