"""The benchmark's photo domain: textured, lit, framed renders composited on real backgrounds.

Why a second renderer: the gallery is rendered by :mod:`ftspl.engine.rendering.renderer` as
plain grey Phong views on white (the shape domain). Labelled "photos" must
come from another domain -- like a product photo: the object's own material
colours and texture maps, a random viewpoint, distance, lens and light,
a real background (a photo, a floor/wall texture or a studio backdrop), a soft
ground shadow, then the camera's faults (colour cast, blur, sensor noise,
JPEG). If the photos looked like the gallery views, the transfer problem the
method is about would not exist.

Every random choice is drawn from the ``numpy.random.Generator`` the caller
passes, and nothing else varies (no time, no global RNG), so the same
generator state gives the same JPEG bytes on the same driver.

Backgrounds come only from Debian packages fetched with ``apt-get download``:
the photographs among ``plasma-workspace-wallpapers`` (LGPL-3 per wallpaper,
GPL-2+ package) and ``mate-backgrounds`` (GPL-2+ nature photos), and the
floor/wall/sky textures in the ``sweethome3d`` jar (GPL-2+ / CC-BY 3.0).
"""

from __future__ import annotations

import io
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ftspl.engine.errors import InputFileError, RenderError
from ftspl.engine.rendering.renderer import look_at, perspective

log = logging.getLogger(__name__)

__all__ = [
    "Background",
    "PhotoConfig",
    "PhotoRenderer",
    "TexturedMesh",
    "fetch_backgrounds",
    "load_textured_mesh",
]

BACKGROUND_PACKAGE = "mate-backgrounds"
KDE_PACKAGE = "plasma-workspace-wallpapers"
_PHOTO_DIR = "usr/share/backgrounds/mate/nature"
_KDE_DIR = "usr/share/wallpapers"
#: The photographs among the KDE wallpapers (the others are drawings and abstract art).
KDE_PHOTOS = (
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "Kite",
    "OneStandsOut", "Path", "summer_1am",
)
_JAR = "usr/share/sweethome3d/sweethome3d.jar"
_JAR_TEXTURES = "com/eteks/sweethome3d/io/resources/textures/"
_BG_MAX_SIDE = 640  #: backgrounds are cropped at most this large, so keep them decoded at this size


class TextureLoadError(InputFileError):
    """A model file cannot be loaded with its materials."""


@dataclass(frozen=True)
class PhotoConfig:
    """Ranges of the photo domain's random choices (uniform unless said otherwise)."""

    image_size: int = 256
    supersample: float = 1.5  #: render this much larger, then downscale (softer edges, like a lens)
    msaa: int = 4
    front_bias: float = 0.75  #: probability that the azimuth is drawn around the front (N(0, 40 deg))
    front_sigma_deg: float = 40.0
    elevation_deg: tuple[float, float] = (-5.0, 35.0)
    fov_deg: tuple[float, float] = (25.0, 55.0)
    fill: tuple[float, float] = (0.7, 1.0)  #: bounding-sphere diameter / frame height
    offset: float = 0.06  #: largest shift of the object's centre, in frame heights
    roll_deg: float = 4.0
    light_elevation_deg: tuple[float, float] = (20.0, 75.0)
    light_intensity: tuple[float, float] = (0.55, 1.0)
    ambient: tuple[float, float] = (0.35, 0.6)
    #: background kind -> probability: a photo, a tiled floor/wall texture, a studio backdrop
    background_mix: tuple[tuple[str, float], ...] = (("photo", 0.35), ("texture", 0.3), ("studio", 0.35))
    background_blur: tuple[float, float] = (0.0, 2.5)  #: depth of field, in output pixels
    shadow_prob: float = 0.7
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.3
    hue: float = 0.03  #: largest hue rotation, in turns
    blur_prob: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    noise_sigma: tuple[float, float] = (0.0, 5.0)  #: sensor noise, 0-255 scale
    jpeg_quality: tuple[int, int] = (50, 95)


# --------------------------------------------------------------------- meshes
@dataclass
class Part:
    """One material's triangles, ready to upload (normalised coordinates)."""

    positions: np.ndarray  #: (N, 3) float32
    normals: np.ndarray  #: (N, 3) float32; zeros where the file has none usable
    uvs: np.ndarray  #: (N, 2) float32; zeros without texture
    faces: np.ndarray  #: (F, 3) uint32
    color: tuple[float, float, float]
    alpha: float
    texture: np.ndarray | None  #: (H, W, 4) uint8, row 0 at the top, or None
    specular: float
    shininess: float


@dataclass
class TexturedMesh:
    parts: list[Part] = field(default_factory=list)

    @property
    def n_faces(self) -> int:
        return sum(len(p.faces) for p in self.parts)

    @property
    def textured(self) -> bool:
        return any(p.texture is not None for p in self.parts)


def _mtl_extras(folder: Path) -> dict[str, dict[str, float]]:
    """``d``/``Tr`` (transparency) and ``Ks`` per material name: trimesh keeps neither."""
    out: dict[str, dict[str, float]] = {}
    for mtl in folder.glob("*.mtl"):
        current: dict[str, float] | None = None
        for line in mtl.read_text(encoding="latin-1").splitlines():
            parts = line.split()
            if not parts:
                continue
            key = parts[0]
            try:
                if key == "newmtl" and len(parts) > 1:
                    current = out.setdefault(" ".join(parts[1:]), {})
                elif current is not None and key == "d" and len(parts) > 1:
                    current["alpha"] = float(parts[1])
                elif current is not None and key == "Tr" and len(parts) > 1:
                    current.setdefault("alpha", 1.0 - float(parts[1]))
                elif current is not None and key == "Ks" and len(parts) > 3:
                    current["specular"] = float(np.mean([float(x) for x in parts[1:4]]))
            except ValueError:  # a malformed number: keep the defaults for that key
                continue
    return out


def load_textured_mesh(path: Path, max_texture: int = 1024) -> TexturedMesh:
    """Load an OBJ with its MTL colours and texture maps, centred and scaled to radius 1.

    Why trimesh: it already splits an OBJ by material and resolves ``map_Kd``
    images relative to the file. Transparency and specular colour it does not
    keep are read from the MTL files beside the OBJ.
    """
    import trimesh

    path = Path(path)
    try:
        scene = trimesh.load(path, force="scene", skip_materials=False, process=False)
    # trimesh raises whatever its parsers raise (ValueError, IndexError, KeyError, OSError...)
    except Exception as exc:  # noqa: BLE001 - third-party parser boundary
        raise TextureLoadError(path, f"cannot load with materials: {type(exc).__name__}: {exc}") from None
    extras = _mtl_extras(path.parent)
    # Normals only from the file: trimesh's computed ones average faces of mixed winding
    # into garbage, where the shader's flat normal (screen-space derivatives) is always right.
    file_normals = _has_normals(path)
    mesh = TexturedMesh()
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geom = scene.geometry[name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        pos = trimesh.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform)
        if file_normals:
            with np.errstate(invalid="ignore", divide="ignore"):
                normals = np.asarray(geom.vertex_normals, dtype=np.float64) @ np.asarray(transform)[:3, :3].T
            normals = np.nan_to_num(normals)
        else:
            normals = np.zeros_like(pos)
        visual = geom.visual
        color, texture, uvs = (0.8, 0.8, 0.8), None, None
        material = getattr(visual, "material", None)
        mat_name = getattr(material, "name", None) or ""
        if material is not None:
            diffuse = getattr(material, "diffuse", None)
            if diffuse is None:
                diffuse = getattr(material, "baseColorFactor", None)
            if diffuse is not None:
                color = tuple(float(c) / 255.0 for c in np.asarray(diffuse)[:3])
            image = getattr(material, "image", None)
            if image is None:
                image = getattr(material, "baseColorTexture", None)
            uv = getattr(visual, "uv", None)
            if image is not None and uv is not None and len(uv) == len(pos):
                texture = _texture_array(image, max_texture)
                uvs = np.asarray(uv, dtype=np.float32)
        elif hasattr(visual, "main_color"):
            color = tuple(float(c) / 255.0 for c in np.asarray(visual.main_color)[:3])
        extra = extras.get(mat_name, {})
        mesh.parts.append(
            Part(
                positions=pos.astype(np.float32),
                normals=normals.astype(np.float32),
                uvs=uvs if uvs is not None else np.zeros((len(pos), 2), np.float32),
                faces=np.asarray(geom.faces, dtype=np.uint32),
                color=color,
                alpha=float(np.clip(extra.get("alpha", 1.0), 0.0, 1.0)),
                texture=texture,
                specular=float(np.clip(extra.get("specular", 0.2), 0.0, 1.0)),
                shininess=float(np.clip(getattr(material, "glossiness", None) or 30.0, 2.0, 200.0)),
            )
        )
    if not mesh.parts:
        raise TextureLoadError(path, "no triangles with materials found")
    _normalise(mesh)
    return mesh


def _has_normals(path: Path) -> bool:
    """Whether an OBJ has ``vn`` lines (read as bytes: no decoding of a large file)."""
    with open(path, "rb") as fh:
        return any(line.startswith(b"vn ") for line in fh)


def _texture_array(image: Image.Image, max_side: int) -> np.ndarray:
    img = image.convert("RGBA")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _normalise(mesh: TexturedMesh) -> None:
    """Centre the bounding box at the origin and scale the farthest vertex to radius 1."""
    allv = np.concatenate([p.positions for p in mesh.parts])
    centre = (allv.min(axis=0) + allv.max(axis=0)) / 2.0
    scale = float(np.linalg.norm(allv - centre, axis=1).max())
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError("cannot normalise a mesh with zero extent")
    for p in mesh.parts:
        p.positions = ((p.positions - centre) / scale).astype(np.float32)


# ---------------------------------------------------------------- backgrounds
@dataclass(frozen=True)
class Background:
    kind: str  #: photo or texture
    name: str  #: package:path
    credit: str  #: author and licence, for the NOTICE
    image: Image.Image  #: RGB, at most _BG_MAX_SIDE on its longer side (textures tiled first)


def fetch_backgrounds(cache: Path) -> tuple[list[Background], dict[str, str]]:
    """Real background images from Debian packages; returns them and {package: version}.

    The photographs of ``plasma-workspace-wallpapers`` and ``mate-backgrounds``
    and the floor, wall, grass and sky textures of the ``sweethome3d`` jar
    (tiled so a crop looks like a surface, not one tile).
    """
    import json

    from ftspl.data.sh3d import CATALOG_PACKAGE, fetch_package, package_version

    root = fetch_package(cache, BACKGROUND_PACKAGE, _PHOTO_DIR)
    fetch_package(cache, KDE_PACKAGE, f"{_KDE_DIR}/{KDE_PHOTOS[0]}")
    fetch_package(cache, CATALOG_PACKAGE, _JAR)
    out: list[Background] = []
    for name in KDE_PHOTOS:
        folder = root / _KDE_DIR / name
        sizes = sorted(folder.glob("contents/images/*.jpg"), key=lambda p: abs(_width(p) - 1280))
        if not sizes:
            continue
        try:
            author = json.loads((folder / "metadata.json").read_text())["KPlugin"]["Authors"][0]["Name"]
        except (OSError, ValueError, KeyError, IndexError):
            author = "KDE"
        out.append(Background("photo", f"{KDE_PACKAGE}:{name}", f"{author}, LGPL-3", _decoded(sizes[0])))
    for p in sorted((root / _PHOTO_DIR).glob("*.jpg")):
        out.append(Background("photo", f"{BACKGROUND_PACKAGE}:{p.name}", "MATE artwork, GPL-2+", _decoded(p)))
    with zipfile.ZipFile(root / _JAR) as zf:
        for name in sorted(n for n in zf.namelist() if n.startswith(_JAR_TEXTURES) and n.endswith(".jpg")):
            tile = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
            out.append(
                Background(
                    "texture", f"{CATALOG_PACKAGE}:{name.rsplit('/', 1)[1]}", "eTeks, GPL-2+ / CC-BY 3.0", _tiled(tile)
                )
            )
    if not any(b.kind == "photo" for b in out) or not any(b.kind == "texture" for b in out):
        raise RenderError(f"{cache}: background images missing from {BACKGROUND_PACKAGE} / {CATALOG_PACKAGE}")
    versions = {pkg: package_version(cache, pkg) for pkg in (KDE_PACKAGE, BACKGROUND_PACKAGE, CATALOG_PACKAGE)}
    return out, versions


def _width(p: Path) -> int:
    try:
        return int(p.stem.split("x")[0])
    except ValueError:
        return 0


def _decoded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.draft("RGB", (_BG_MAX_SIDE, _BG_MAX_SIDE))  # JPEG DCT scaling: fast decode of big photos
        rgb = img.convert("RGB")
    rgb.thumbnail((_BG_MAX_SIDE, _BG_MAX_SIDE), Image.Resampling.LANCZOS)
    return rgb


def _tiled(tile: Image.Image, side: int = 512) -> Image.Image:
    """Repeat a texture tile so it covers ``side`` x ``side`` with 3 to 4 repeats."""
    reps = 3
    w, h = tile.size
    scale = side / (reps * max(w, h))
    tile = tile.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    w, h = tile.size
    canvas = Image.new("RGB", (side, side))
    for y in range(0, side, h):
        for x in range(0, side, w):
            canvas.paste(tile, (x, y))
    return canvas


def _background(kind: str, pool: list[Background], size: int, rng: np.random.Generator, cfg: PhotoConfig) -> np.ndarray:
    """A (size, size, 3) float32 background in 0..1."""
    if kind == "studio":
        # A seamless backdrop: a light, slightly tinted vertical gradient with a vignette.
        top = np.clip(rng.uniform(0.78, 1.0) + rng.normal(0, 0.04, 3), 0, 1)
        bottom = np.clip(top * rng.uniform(0.75, 0.98), 0, 1)
        t = np.linspace(0.0, 1.0, size)[:, None, None]
        img = top * (1 - t) + bottom * t
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        img = img * (1.0 - rng.uniform(0.0, 0.35) * (xx**2 + yy**2))[..., None]
        return np.broadcast_to(img, (size, size, 3)).astype(np.float32)
    choices = [b for b in pool if b.kind == kind] or pool
    bg = choices[int(rng.integers(len(choices)))].image
    w, h = bg.size
    side = int(min(w, h) * rng.uniform(0.35, 1.0))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    sigma = rng.uniform(*cfg.background_blur)
    if sigma > 0.3:
        crop = crop.filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(crop, dtype=np.float32) / 255.0


# ------------------------------------------------------------------- renderer
_VS = """
#version 330
uniform mat4 u_mvp;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
out vec3 v_world;
out vec3 v_normal;
out vec2 v_uv;
void main() {
    gl_Position = u_mvp * vec4(in_pos, 1.0);
    v_world = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
}
"""

_FS = """
#version 330
uniform vec3 u_eye;
uniform vec3 u_light_dir;
uniform vec3 u_light_col;
uniform vec3 u_sky;
uniform vec3 u_ground;
uniform vec3 u_fill_col;
uniform vec3 u_color;
uniform float u_alpha;
uniform float u_specular;
uniform float u_shininess;
uniform bool u_has_tex;
uniform sampler2D u_tex;
in vec3 v_world;
in vec3 v_normal;
in vec2 v_uv;
out vec4 f_color;
void main() {
    vec3 to_eye = normalize(u_eye - v_world);
    vec3 n = v_normal;
    if (length(n) < 1e-4) n = cross(dFdx(v_world), dFdy(v_world));
    n = length(n) > 0.0 ? normalize(n) : to_eye;
    if (dot(n, to_eye) < 0.0) n = -n;  // two-sided: files from the wild have mixed winding
    vec4 base = vec4(u_color, u_alpha);
    if (u_has_tex) {
        vec4 t = texture(u_tex, v_uv);
        if (t.a < 0.5) discard;  // cut-out leaves, fences, lace
        // map_Kd is modulated by Kd, except where an exporter left Kd black or near black
        base.rgb = max(u_color.r, max(u_color.g, u_color.b)) > 0.15 ? t.rgb * u_color : t.rgb;
    }
    vec3 hemi = mix(u_ground, u_sky, 0.5 + 0.5 * n.y);
    float diff = max(dot(n, u_light_dir), 0.0);
    float fill = max(dot(n, to_eye), 0.0);
    vec3 h = normalize(u_light_dir + to_eye);
    float spec = diff > 0.0 ? pow(max(dot(n, h), 0.0), u_shininess) : 0.0;
    vec3 c = base.rgb * (hemi + diff * u_light_col + fill * u_fill_col) + u_specular * spec * u_light_col;
    f_color = vec4(clamp(c, 0.0, 1.0) * base.a, base.a);  // premultiplied alpha
}
"""


def _unit(az_deg: float, el_deg: float) -> np.ndarray:
    az, el = math.radians(az_deg), math.radians(el_deg)
    return np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])


def _kelvin_tint(rng: np.random.Generator) -> np.ndarray:
    """A light colour between warm tungsten and cool daylight."""
    t = rng.uniform(-1.0, 1.0)
    warm, cool = np.array([1.0, 0.86, 0.68]), np.array([0.85, 0.92, 1.0])
    return np.array([1.0, 1.0, 1.0]) + (warm - 1.0) * max(-t, 0.0) + (cool - 1.0) * max(t, 0.0)


class PhotoRenderer:
    """Renders a :class:`TexturedMesh` into photo-like JPEG bytes.

    One EGL context per instance, reused for every mesh and view; not
    thread-safe (use one per thread or process). Use as a context manager.
    """

    def __init__(self, cfg: PhotoConfig = PhotoConfig()) -> None:
        self.cfg = cfg
        self._size = max(8, round(cfg.image_size * cfg.supersample))
        from ftspl.engine.rendering.renderer import Renderer

        self._ctx = Renderer._create_context()  # same EGL boundary and error message as the gallery's
        try:
            import moderngl

            ctx = self._ctx
            samples = min(cfg.msaa, ctx.max_samples) if cfg.msaa > 1 else 0
            size = (self._size, self._size)
            self._msaa = ctx.framebuffer(
                color_attachments=[ctx.renderbuffer(size, 4, samples=samples)],
                depth_attachment=ctx.depth_renderbuffer(size, samples=samples),
            )
            self._resolved = ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, 4)]) if samples else self._msaa
            self._prog = ctx.program(vertex_shader=_VS, fragment_shader=_FS)
            self._moderngl = moderngl
        except Exception:
            self._ctx.release()
            raise

    # -- one mesh, several photos -------------------------------------------------
    def render(
        self, mesh: TexturedMesh, rng: np.random.Generator, backgrounds: list[Background], n: int = 1
    ) -> list[bytes]:
        """``n`` photos (JPEG bytes) of ``mesh``, each with fresh random camera, light and background."""
        if self._ctx is None:
            raise RuntimeError("PhotoRenderer is closed")
        mgl, ctx = self._moderngl, self._ctx
        uploaded = []
        try:
            for part in mesh.parts:
                data = np.concatenate([part.positions, part.normals, part.uvs], axis=1).astype("f4")
                vbo = ctx.buffer(data.tobytes())
                ibo = ctx.buffer(np.ascontiguousarray(part.faces, dtype="u4").tobytes())
                vao = ctx.vertex_array(
                    self._prog, [(vbo, "3f 3f 2f", "in_pos", "in_normal", "in_uv")], ibo, index_element_size=4
                )
                tex = None
                if part.texture is not None:
                    img = np.ascontiguousarray(part.texture[::-1])  # GL's row 0 is the bottom (v = 0)
                    tex = ctx.texture((img.shape[1], img.shape[0]), 4, img.tobytes())
                    tex.build_mipmaps()
                    tex.filter = (mgl.LINEAR_MIPMAP_LINEAR, mgl.LINEAR)
                    tex.repeat_x = tex.repeat_y = True
                uploaded.append((part, vbo, ibo, vao, tex))
            return [self._one(uploaded, rng, backgrounds) for _ in range(n)]
        except mgl.Error as exc:
            raise RenderError(f"OpenGL failed while rendering a photo: {exc}") from exc
        finally:
            for _, vbo, ibo, vao, tex in uploaded:
                for obj in (vao, ibo, vbo, tex):
                    if obj is not None:
                        obj.release()

    def _one(self, uploaded: list, rng: np.random.Generator, backgrounds: list[Background]) -> bytes:
        cfg, mgl, ctx, prog = self.cfg, self._moderngl, self._ctx, self._prog
        # camera
        if rng.random() < cfg.front_bias:
            az = float(np.clip(rng.normal(0.0, cfg.front_sigma_deg), -100.0, 100.0))
        else:
            az = float(rng.uniform(-180.0, 180.0))
        el = float(rng.uniform(*cfg.elevation_deg))
        fov = float(rng.uniform(*cfg.fov_deg))
        fill = float(rng.uniform(*cfg.fill))
        dist = 1.0 / (math.tan(math.radians(fov) / 2.0) * fill)
        dist = max(dist, 1.3)
        eye = dist * _unit(az, el)
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up_cam = np.cross(right, fwd)
        shift = rng.uniform(-cfg.offset, cfg.offset, 2) * 2.0 * dist * math.tan(math.radians(fov) / 2.0)
        target = -(shift[0] * right + shift[1] * up_cam)
        roll = math.radians(rng.uniform(-cfg.roll_deg, cfg.roll_deg))
        up = math.cos(roll) * np.array([0.0, 1.0, 0.0]) + math.sin(roll) * right
        mvp = perspective(fov, max(dist - 1.2, 0.05), dist + 1.2) @ look_at(eye, target, up)
        # lights: a key light from the camera's side of the object, a hemisphere ambient, a weak fill
        light_az = az + float(rng.uniform(-80.0, 80.0))
        light_dir = _unit(light_az, float(rng.uniform(*cfg.light_elevation_deg)))
        tint = _kelvin_tint(rng)
        key = tint * float(rng.uniform(*cfg.light_intensity))
        amb = float(rng.uniform(*cfg.ambient))
        sky = amb * _kelvin_tint(rng)
        ground = sky * float(rng.uniform(0.4, 0.8))
        prog["u_mvp"].write(np.ascontiguousarray(mvp.T, dtype="f4").tobytes())
        prog["u_eye"].value = tuple(eye)
        prog["u_light_dir"].value = tuple(light_dir)
        prog["u_light_col"].value = tuple(key)
        prog["u_sky"].value = tuple(sky)
        prog["u_ground"].value = tuple(ground)
        prog["u_fill_col"].value = tuple(tint * float(rng.uniform(0.05, 0.2)))
        self._msaa.use()
        self._msaa.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        ctx.disable(mgl.BLEND)
        opaque = [u for u in uploaded if u[0].alpha >= 0.95]
        clear = [u for u in uploaded if u[0].alpha < 0.95]
        for part, _, _, vao, tex in opaque:
            self._draw(part, vao, tex)
        if clear:  # glass etc.: blended over what is behind, without hiding it from later glass
            ctx.enable(mgl.BLEND)
            ctx.blend_func = (mgl.ONE, mgl.ONE_MINUS_SRC_ALPHA)  # premultiplied
            ctx.depth_mask = False
            for part, _, _, vao, tex in clear:
                self._draw(part, vao, tex)
            ctx.depth_mask = True
            ctx.disable(mgl.BLEND)
        if self._resolved is not self._msaa:
            ctx.copy_framebuffer(self._resolved, self._msaa)
        raw = self._resolved.read(components=4, alignment=1)
        rgba = np.frombuffer(raw, dtype=np.uint8).reshape(self._size, self._size, 4)[::-1]
        return self._finish(rgba, light_dir, rng, backgrounds)

    def _draw(self, part: Part, vao, tex) -> None:
        prog = self._prog
        prog["u_color"].value = part.color
        prog["u_alpha"].value = max(part.alpha, 0.15)
        prog["u_specular"].value = part.specular
        prog["u_shininess"].value = part.shininess
        prog["u_has_tex"].value = tex is not None
        if tex is not None:
            tex.use(0)
            prog["u_tex"].value = 0
        vao.render()

    def _finish(self, rgba: np.ndarray, light_dir: np.ndarray, rng: np.random.Generator, pool: list[Background]) -> bytes:
        """Downscale, shadow, composite on a background, then the camera's faults and JPEG."""
        cfg, size = self.cfg, self.cfg.image_size
        if rgba.shape[0] != size:
            # Band by band: PIL's RGBA resize assumes straight alpha and would brighten our
            # premultiplied edges into a light halo.
            bands = [Image.fromarray(np.ascontiguousarray(rgba[..., i])) for i in range(4)]
            rgba = np.stack([np.asarray(b.resize((size, size), Image.Resampling.LANCZOS)) for b in bands], axis=-1)
        fg = rgba.astype(np.float32) / 255.0  # premultiplied rgb, alpha
        alpha = fg[..., 3:4]
        kinds, probs = zip(*cfg.background_mix)
        kind = kinds[int(rng.choice(len(kinds), p=np.asarray(probs) / sum(probs)))]
        bg = _background(kind, pool, size, rng, cfg)
        if rng.random() < cfg.shadow_prob and alpha.max() > 0:
            # A soft shadow cast away from the key light, as on a floor or a backdrop.
            dx = round(-light_dir[0] * size * 0.04)
            dy = round(size * rng.uniform(0.01, 0.05))
            mask = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8), "L")
            mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy))
            mask = mask.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.015, 0.05)))
            shadow = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
            bg = bg * (1.0 - rng.uniform(0.25, 0.55) * shadow)
        photo = fg[..., :3] + bg * (1.0 - alpha)
        out = Image.fromarray((np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
        out = ImageEnhance.Brightness(out).enhance(1 + rng.uniform(-cfg.brightness, cfg.brightness))
        out = ImageEnhance.Contrast(out).enhance(1 + rng.uniform(-cfg.contrast, cfg.contrast))
        out = ImageEnhance.Color(out).enhance(1 + rng.uniform(-cfg.saturation, cfg.saturation))
        hue = rng.uniform(-cfg.hue, cfg.hue)
        if abs(hue) > 1e-3:
            hsv = np.asarray(out.convert("HSV"), dtype=np.int16)
            hsv[..., 0] = (hsv[..., 0] + round(hue * 255)) % 256
            out = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
        if rng.random() < cfg.blur_prob:
            out = out.filter(ImageFilter.GaussianBlur(rng.uniform(*cfg.blur_sigma)))
        sigma = rng.uniform(*cfg.noise_sigma)
        if sigma > 0.5:
            arr = np.asarray(out, dtype=np.float32) + rng.normal(0.0, sigma, (size, size, 3))
            out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        return buf.getvalue()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.release()
            self._ctx = None

    def __enter__(self) -> PhotoRenderer:  # noqa: PYI034 - final class, as in engine.render
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
