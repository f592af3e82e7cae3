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

Textured meshes come from :mod:`ftspl.data.textured`, backgrounds (real
images from Debian packages, or studio backdrops) from
:mod:`ftspl.data.backgrounds`, the ranges of every random choice
(:class:`PhotoConfig`, re-exported here) from :mod:`ftspl.data.photo_config`;
this module holds the renderer and the camera's faults.

The knobs that widen the photos further (clutter, material colours, vignetting, white
balance, motion blur, low resolution) are off by default; :mod:`ftspl.data.variety` holds
their presets and image effects.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ftspl.data.backgrounds import Background, draw_background
from ftspl.data.photo_config import PhotoConfig
from ftspl.data.textured import Part, TexturedMesh
from ftspl.data.variety import (
    composite_occluders,
    draw_material,
    lens_faults,
    paint_over,
    sensor_faults,
)
from ftspl.engine.errors import RenderError
from ftspl.engine.rendering.renderer import look_at, perspective

__all__ = ["PhotoConfig", "PhotoRenderer"]


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
uniform bool u_recolour;
uniform mat3 u_colmat;
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
    if (u_recolour) base.rgb = clamp(u_colmat * base.rgb, 0.0, 1.0);
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
        self, mesh: TexturedMesh, rng: np.random.Generator, backgrounds: list[Background], n: int = 1,
        *, cfg: PhotoConfig | None = None, cutouts: list[np.ndarray] | None = None,
    ) -> list[bytes]:
        """``n`` photos (JPEG bytes) of ``mesh``, each with fresh random camera, light and background.

        ``cfg`` replaces the renderer's settings for these photos (same image size, supersampling
        and MSAA: the framebuffers are the renderer's); ``cutouts`` are other objects
        (:meth:`cutouts`) that ``cfg.clutter`` may place beside or in front of this one.
        """
        cfg = self._check_cfg(cfg)
        with self._uploaded(mesh) as uploaded:
            return [self._finish(*self._rgba(uploaded, rng, cfg), rng, backgrounds, cfg, cutouts or [])
                    for _ in range(n)]

    def cutouts(self, mesh: TexturedMesh, rng: np.random.Generator, n: int = 1,
                cfg: PhotoConfig | None = None) -> list[np.ndarray]:
        """``n`` views of ``mesh`` without background, cropped to the object: premultiplied float RGBA
        at the output scale, for use as clutter in other photos."""
        cfg = self._check_cfg(cfg)
        out = []
        with self._uploaded(mesh) as uploaded:
            for _ in range(n):
                rgba = self._downscaled(self._rgba(uploaded, rng, cfg)[0], cfg.image_size)
                ys, xs = np.nonzero(rgba[..., 3] > 2)
                if len(ys):
                    out.append(rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0)
        return out

    def _check_cfg(self, cfg: PhotoConfig | None) -> PhotoConfig:
        if self._ctx is None:
            raise RuntimeError("PhotoRenderer is closed")
        cfg = cfg or self.cfg
        if (cfg.image_size, cfg.supersample, cfg.msaa) != (self.cfg.image_size, self.cfg.supersample, self.cfg.msaa):
            raise ValueError("a per-call PhotoConfig must keep the renderer's image_size, supersample and msaa")
        return cfg

    @contextmanager
    def _uploaded(self, mesh: TexturedMesh):
        """The mesh's parts as GL buffers and textures, released on exit."""
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
            yield uploaded
        except mgl.Error as exc:
            raise RenderError(f"OpenGL failed while rendering a photo: {exc}") from exc
        finally:
            for _, vbo, ibo, vao, tex in uploaded:
                for obj in (vao, ibo, vbo, tex):
                    if obj is not None:
                        obj.release()

    def _rgba(self, uploaded: list, rng: np.random.Generator, cfg: PhotoConfig) -> tuple[np.ndarray, np.ndarray]:
        """One random view at the supersampled size: (premultiplied RGBA uint8, key light direction)."""
        prog = self._prog
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
        recolour = [draw_material(rng, cfg) for _ in uploaded] if cfg.material_prob > 0 else [None] * len(uploaded)
        return self._draw_all(uploaded, recolour), light_dir

    def _draw_all(self, uploaded: list, recolour: list) -> np.ndarray:
        """Draw uploaded parts with the uniforms already set (opaque, then glass blended over them);
        the frame as premultiplied RGBA uint8 at the supersampled size, row 0 at the top."""
        mgl, ctx = self._moderngl, self._ctx
        self._msaa.use()
        self._msaa.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        ctx.disable(mgl.BLEND)
        opaque = [(u, m) for u, m in zip(uploaded, recolour) if u[0].alpha >= 0.95]
        clear = [(u, m) for u, m in zip(uploaded, recolour) if u[0].alpha < 0.95]
        for (part, _, _, vao, tex), mat in opaque:
            self._draw(part, vao, tex, mat)
        if clear:  # glass etc.: blended over what is behind, without hiding it from later glass
            ctx.enable(mgl.BLEND)
            ctx.blend_func = (mgl.ONE, mgl.ONE_MINUS_SRC_ALPHA)  # premultiplied
            ctx.depth_mask = False
            for (part, _, _, vao, tex), mat in clear:
                self._draw(part, vao, tex, mat)
            ctx.depth_mask = True
            ctx.disable(mgl.BLEND)
        if self._resolved is not self._msaa:
            ctx.copy_framebuffer(self._resolved, self._msaa)
        raw = self._resolved.read(components=4, alignment=1)
        return np.frombuffer(raw, dtype=np.uint8).reshape(self._size, self._size, 4)[::-1]

    def _draw(self, part: Part, vao, tex, colmat: np.ndarray | None = None) -> None:
        prog = self._prog
        prog["u_recolour"].value = colmat is not None
        if colmat is not None:  # GLSL matrices are column-major
            prog["u_colmat"].write(np.ascontiguousarray(colmat.T, dtype="f4").tobytes())
        prog["u_color"].value = part.color
        prog["u_alpha"].value = max(part.alpha, 0.15)
        prog["u_specular"].value = part.specular
        prog["u_shininess"].value = part.shininess
        prog["u_has_tex"].value = tex is not None
        if tex is not None:
            tex.use(0)
            prog["u_tex"].value = 0
        vao.render()

    @staticmethod
    def _downscaled(rgba: np.ndarray, size: int) -> np.ndarray:
        if rgba.shape[0] != size:
            # Band by band: PIL's RGBA resize assumes straight alpha and would brighten our
            # premultiplied edges into a light halo.
            bands = [Image.fromarray(np.ascontiguousarray(rgba[..., i])) for i in range(4)]
            rgba = np.stack([np.asarray(b.resize((size, size), Image.Resampling.LANCZOS)) for b in bands], axis=-1)
        return rgba

    def _finish(self, rgba: np.ndarray, light_dir: np.ndarray, rng: np.random.Generator, pool: list[Background],
                cfg: PhotoConfig, cutouts: list[np.ndarray]) -> bytes:
        """Downscale, shadow, clutter, composite on a background, then the camera's faults and JPEG."""
        size = cfg.image_size
        rgba = self._downscaled(rgba, size)
        fg = rgba.astype(np.float32) / 255.0  # premultiplied rgb, alpha
        alpha = fg[..., 3:4]
        kinds, probs = zip(*cfg.background_mix)
        kind = kinds[int(rng.choice(len(kinds), p=np.asarray(probs) / sum(probs)))]
        bg = draw_background(kind, pool, size, rng, cfg.background_blur)
        if rng.random() < cfg.shadow_prob and alpha.max() > 0:
            # A soft shadow cast away from the key light, as on a floor or a backdrop.
            dx = round(-light_dir[0] * size * 0.04)
            dy = round(size * rng.uniform(0.01, 0.05))
            mask = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8), "L")
            mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy))
            mask = mask.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.015, 0.05)))
            shadow = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
            bg = bg * (1.0 - rng.uniform(0.25, 0.55) * shadow)
        bg, front = composite_occluders(bg, alpha, rng, cfg, pool, cutouts) if cfg.clutter[1] > 0 else (bg, [])
        photo = fg[..., :3] + bg * (1.0 - alpha)
        for occ, y, x in front:
            photo = paint_over(photo, occ, y, x)
        photo = lens_faults(photo, rng, cfg)
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
        out = sensor_faults(out, rng, cfg)
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
