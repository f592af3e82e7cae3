"""The one place where rendering constants and the preprocessing record live.

Why one module: train, export and serve must never drift. The trainer renders
views with exactly these values and preprocesses photos with its backbone's
registry entry; export copies both into the model manifest, and the engine reads
them back from the manifest (never from a second hard-coded copy).
``tests/test_constants.py`` asserts they agree.

This module is torch-free and imports nothing heavy: it sits at the bottom of
the layer stack (engine -> train -> export -> cli).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from ftspl.engine.errors import UnknownKeyError

# --- The paper's multi-view setting (FTSPL Sec. III, following MVCNN) -------
VIEWS = 12  #: virtual cameras on a circle around the upright axis
AZIMUTH_STEP_DEG = 30.0  #: one camera every 30 degrees
ELEVATION_DEG = 30.0  #: cameras elevated 30 degrees above the horizon
IMAGE_SIZE = 224  #: square input of the CNN, for photos and views alike
EMBED_DIM = 256  #: the bottleneck size M of a trained model (paper: 256)

# --- Mesh normalisation ------------------------------------------------------
#: Meshes are centred (bounding-box centre) and scaled so that every vertex lies
#: inside a sphere of this radius; cameras are placed for that sphere.
NORMALIZE_RADIUS = 1.0
UP_AXES = ("y", "z")  #: ``--up``: which axis of the file points up
DEFAULT_UP = "y"  #: what trimesh loads as +Y

# --- Photo preprocessing -----------------------------------------------------
#: Per-backbone values (mean, std, input size, crop fraction) live in the backbone's
#: registry entry (``ftspl.train.backbone_registry.BACKBONES``), which export copies into the
#: manifest; the engine reads them only from there (:class:`Preprocess` has no defaults).

# --- Bad-input caps (configurable per call; these are the defaults) ---------
MAX_FILE_BYTES = 512 * 1024 * 1024  #: a mesh or photo file larger than this is refused
MAX_FACES = 5_000_000  #: meshes with more faces are refused
MAX_VERTICES = 5_000_000
MAX_IMAGE_PIXELS = 64_000_000  #: decompression-bomb guard for photos and views

# --- How gallery views are coloured -------------------------------------------
#: ``grey``: one grey Phong material for every shape (the paper's shape domain).
#: ``materials``: each shape's own colours and textures (OBJ+MTL ``Kd``/``map_Kd``, glTF
#: base colour and texture, PLY vertex/face colours); shapes without any render grey.
LOOKS = ("grey", "materials")
#: the look of a spec that names none: models and indexes written before looks existed rendered grey.
#: The product's default look (what training renders and ``export --pretrained`` serves) is
#: ``ftspl.train.config.TrainConfig.look``.
DEFAULT_LOOK = "grey"


@dataclass(frozen=True)
class RenderSpec:
    """Everything that decides how a shape's views look.

    Hashed into the model manifest and the index: an index refuses shapes
    rendered under another spec, because their embeddings are not comparable.
    """

    views: int = VIEWS
    azimuth_step_deg: float = AZIMUTH_STEP_DEG
    azimuth_start_deg: float = 0.0
    elevation_deg: float = ELEVATION_DEG
    image_size: int = IMAGE_SIZE
    up: str = DEFAULT_UP
    normalize_radius: float = NORMALIZE_RADIUS
    #: camera distance from the centre, in units of the normalised radius
    camera_distance: float = 2.5
    fov_deg: float = 50.0
    background_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    material_rgb: tuple[float, float, float] = (0.7, 0.7, 0.7)
    #: Phong terms of a headlight that sits at the camera
    ambient: float = 0.25
    diffuse: float = 0.65
    specular: float = 0.2
    shininess: float = 16.0
    #: A second, fixed light from above so that views are not flat front-lit
    key_light_dir: tuple[float, float, float] = (0.3, 1.0, 0.5)
    key_light: float = 0.25
    two_sided: bool = True
    #: MSAA samples. 0 by default: on Mesa llvmpipe MSAA made the 12-view render 3.3x slower
    #: (250 vs 75 CPU-ms per mesh) while retrieval metrics did not move (SH3D, pretrained
    #: lite0: NN .792 vs .785, DCG .644 vs .647, ANMRR .381 vs .380). GPUs may raise it.
    samples: int = 0
    #: ``grey`` or ``materials`` (:data:`LOOKS`): whether views wear the shape's own materials
    look: str = DEFAULT_LOOK

    def __post_init__(self) -> None:
        if self.look not in LOOKS:
            raise UnknownKeyError("render look", self.look, LOOKS)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Short stable hash of the spec (sorted JSON, sha256, 16 hex digits).

        Fields added after specs were first hashed (:data:`_HASH_NEUTRAL`) are left
        out while they hold the value every older spec implied, so a spec that
        renders as before hashes as before: models, manifests and indexes made
        before the field existed keep matching, and any other value changes the hash.
        """
        data = {k: v for k, v in self.to_dict().items() if _HASH_NEUTRAL.get(k, _NOT_NEUTRAL) != v}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def wants_materials(self) -> bool:
        """Whether shapes are loaded and rendered with their own materials."""
        return self.look == "materials"

    def with_look(self, look: str) -> "RenderSpec":
        return replace(self, look=look)

    def with_up(self, up: str) -> "RenderSpec":
        return replace(self, up=up)

    @classmethod
    def from_dict(cls, data: dict) -> "RenderSpec":
        known = {f for f in cls.__dataclass_fields__}
        clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**clean)


_NOT_NEUTRAL = object()
#: Field -> the value that leaves it out of :meth:`RenderSpec.digest` (the look before ``look`` existed).
_HASH_NEUTRAL: dict[str, object] = {"look": DEFAULT_LOOK}


@dataclass(frozen=True)
class Preprocess:
    """How a photo (or a rendered view) becomes the encoder's input tensor.

    Resize the shorter side to ``image_size / crop_pct``, centre-crop
    ``image_size``, then ``(pixel / 255 - mean) / std`` per RGB channel (the
    ImageNet evaluation transform of timm's pretrained configs). Every field is
    required: the values belong to a backbone and reach the engine through the
    model manifest, so a default here would be a second, silently wrong copy.
    """

    image_size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(
            image_size=int(data["image_size"]),
            crop_pct=float(data["crop_pct"]),
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
        )
