"""Scene photos: several catalogue models composed in a furnished, daylit room and shot like a phone photo.

Users photograph an object where it stands: beside a table, a plant and a
lamp, on a wooden floor, in front of a window. The benchmark's other photos
(:mod:`ftspl.data.photo_domain`) show one model pasted on a backdrop; a scene
photo renders a :class:`~ftspl.data.room.Layout` instead: every model with its
own materials at its catalogue size and place, a floor and walls with the
catalogue's textures or paint (soft contact shadows baked into the floor), a
ceiling, windows showing a real outdoor photo, daylight from the window, then
the same camera faults as every other photo (blur, noise, colour, JPEG).

:class:`SceneRenderer` is a :class:`~ftspl.data.photo_domain.PhotoRenderer`
(the same EGL context, shaders, framebuffers and finishing), drawing a whole
room instead of one model. Before the photo, two flat passes (the main model
alone, then an id buffer of every model) measure how much of the main model
each other model hides; the worst are left out until ``SceneConfig.min_visible``
of it shows. Every random
choice comes from the generator the caller passes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ftspl.data.backgrounds import BACKGROUND_PACKAGE as OUTDOOR_PACKAGE
from ftspl.data.backgrounds import Background
from ftspl.data.catalogue import Texture
from ftspl.data.photo_domain import PhotoConfig, PhotoRenderer, _kelvin_tint
from ftspl.data.room import Layout, Opening, Placed, SceneConfig
from ftspl.data.textured import Part, TexturedMesh
from ftspl.engine.rendering.renderer import look_at, perspective

__all__ = ["SceneRenderer", "placed_parts"]

_PAINT = ((0.93, 0.92, 0.89), (0.95, 0.93, 0.86), (0.86, 0.87, 0.86), (0.90, 0.86, 0.78), (0.82, 0.86, 0.88),
          (0.87, 0.82, 0.80), (0.78, 0.80, 0.72), (0.97, 0.97, 0.97))  #: white, cream, grey, beige, pastels
_FRAME = ((0.95, 0.95, 0.95), (0.55, 0.38, 0.24), (0.2, 0.2, 0.2))  #: white, wood, dark metal
_ROOM = -1  #: owner of the room's parts (walls, floor, ceiling, windows)
_ID_SIDE = 128  #: side of the id passes' frame


def placed_parts(mesh: TexturedMesh, p: Placed) -> list[Part]:
    """``mesh`` (centred, radius 1) as Sweet Home 3D places it: rotated by the catalogue's modelRotation,
    its box scaled to width x height x depth, bottom at ``p.y``, turned by ``p.yaw``, at ``(p.x, p.z)``."""
    rot = p.size.rotation_matrix()
    pts = [part.positions.astype(np.float64) @ rot.T for part in mesh.parts]
    allv = np.concatenate(pts)
    lo, hi = allv.min(axis=0), allv.max(axis=0)
    scale = np.array([p.size.width, p.size.height, p.size.depth]) / np.maximum(hi - lo, 1e-9)
    shift = np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2]) * scale
    c, s = math.cos(p.yaw), math.sin(p.yaw)
    turn = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    where = np.array([p.x, p.y, p.z])
    out = []
    for part, pos in zip(mesh.parts, pts):
        world = (pos * scale - shift) @ turn.T + where
        n = (part.normals.astype(np.float64) @ rot.T) / scale  # inverse transpose of the scale
        n = n @ turn.T
        length = np.linalg.norm(n, axis=1, keepdims=True)
        n = np.where(length > 1e-12, n / np.maximum(length, 1e-12), 0.0)  # zero normals stay zero (flat shading)
        out.append(replace(part, positions=world.astype(np.float32), normals=n.astype(np.float32)))
    return out


def _quad(corners: np.ndarray, normal, uvs: np.ndarray, color, texture=None, specular: float = 0.05) -> Part:
    """A flat rectangle from 4 corners (in order) as a Part."""
    return Part(positions=corners.astype(np.float32), normals=np.tile(np.asarray(normal, np.float32), (4, 1)),
                uvs=uvs.astype(np.float32), faces=np.array([[0, 1, 2], [0, 2, 3]], np.uint32),
                color=tuple(float(x) for x in color), alpha=1.0, texture=texture, specular=specular, shininess=10.0)


def _rgba(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGBA"), dtype=np.uint8)


def _wall_quad(wall: str, lay: Layout, u0: float, u1: float, y0: float, y1: float, off: float = 0.0):
    """Corners (4, 3) and inward normal of a rectangle on ``wall``, ``off`` metres off it (+: into the room)."""
    if wall in ("back", "front"):
        z = lay.z0 + off if wall == "back" else lay.z1 - off
        pts = [[u0, y0, z], [u1, y0, z], [u1, y1, z], [u0, y1, z]]
        normal = (0, 0, 1) if wall == "back" else (0, 0, -1)
    else:
        x = lay.x0 + off if wall == "left" else lay.x1 - off
        pts = [[x, y0, u0], [x, y0, u1], [x, y1, u1], [x, y1, u0]]
        normal = (1, 0, 0) if wall == "left" else (-1, 0, 0)
    return np.array(pts, np.float64), normal


class SceneRenderer(PhotoRenderer):
    """Renders :class:`~ftspl.data.room.Layout` rooms into photo-like JPEG bytes (one EGL context, reused)."""

    def __init__(self, cfg: PhotoConfig = PhotoConfig()) -> None:
        super().__init__(cfg)
        try:  # the id passes: small and single-sampled (they count pixels, nobody sees them)
            side = (_ID_SIDE, _ID_SIDE)
            self._idfb = self._ctx.framebuffer(color_attachments=[self._ctx.renderbuffer(side, 4)],
                                               depth_attachment=self._ctx.depth_renderbuffer(side))
        except Exception:
            self.close()
            raise

    def render_scene(self, lay: Layout, meshes: dict[str, TexturedMesh], rng: np.random.Generator,
                     pool: list[Background], textures: list[Texture], photo: PhotoConfig,
                     cfg: SceneConfig = SceneConfig()) -> bytes:
        """One photo of ``lay`` (``meshes``: key -> mesh of every model in it). Models in front that hide
        too much of the main model leave ``lay`` (:meth:`Layout.drop`), so it lists what the photo shows."""
        photo = self._check_cfg(photo)
        tagged = [(i, part) for i, p in enumerate(lay.items) for part in placed_parts(meshes[p.key], p)]
        tagged += [(_ROOM, part) for part in self._room_parts(lay, rng, pool, textures, cfg)]
        mvp, eye = self._camera(lay, rng, cfg)
        light = self._lights(lay, rng, cfg)
        owners = [i for i, _ in tagged]
        dropped: set[int] = set()
        with self._uploaded(TexturedMesh([part for _, part in tagged])) as uploaded:
            self._prog["u_mvp"].write(np.ascontiguousarray(mvp.T, dtype="f4").tobytes())
            self._prog["u_eye"].value = tuple(eye)
            dropped = self._occluders(uploaded, owners, lay, cfg.min_visible)
            for name, value in light.items():
                self._prog[name].value = value
            kept = [u for u, o in zip(uploaded, owners) if o not in dropped]
            rgba = self._draw_all(kept, [None] * len(kept))
        lay.drop(dropped)
        flat = replace(photo, background_mix=(("studio", 1.0),), shadow_prob=0.0, clutter=(0, 0))
        return self._finish(rgba, lay.light_dir, rng, pool, flat, [])

    # -- passes ------------------------------------------------------------------------------
    def _occluders(self, uploaded: list, owners: list[int], lay: Layout, min_visible: float) -> set[int]:
        """The models to leave out so that ``min_visible`` of the main model shows: the one hiding most of
        it first. Two flat passes: the main model alone, then every model in its own shade (an id buffer);
        glass hides nothing; the main model's support never goes."""
        alone = self._ids(uploaded, [o if o == 0 else None for o in owners]) == 1
        whole = int(alone.sum())
        ids = self._ids(uploaded, [o if o >= 0 else None for o in owners])[alone]
        counts = np.bincount(ids, minlength=len(lay.items) + 2)[1:]  # index i: pixels of the main model model i hides
        keep = {0, lay.main.on}
        dropped: set[int] = set()
        visible = int(counts[0])
        for i in np.argsort(-counts[1:], kind="stable") + 1:
            if whole == 0 or visible >= min_visible * whole or counts[i] == 0:
                break
            if int(i) in keep or int(i) >= len(lay.items):
                continue
            dropped.add(int(i))
            visible += int(counts[i])
        return dropped

    def _ids(self, uploaded: list, shades: list[int | None]) -> np.ndarray:
        """One flat pass: each part drawn in the red shade ``1 + shades[k]`` (None: not drawn), unlit; the
        frame's red channel (0: nothing) as a flat uint8 array."""
        mgl, ctx, prog = self._moderngl, self._ctx, self._prog
        for name, value in (("u_light_col", (0.0, 0.0, 0.0)), ("u_sky", (1.0, 1.0, 1.0)),
                            ("u_ground", (1.0, 1.0, 1.0)), ("u_fill_col", (0.0, 0.0, 0.0)), ("u_specular", 0.0),
                            ("u_alpha", 1.0), ("u_has_tex", False), ("u_recolour", False)):
            prog[name].value = value
        self._idfb.use()
        self._idfb.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(mgl.DEPTH_TEST)
        ctx.disable(mgl.CULL_FACE)
        ctx.disable(mgl.BLEND)
        for (part, _, _, vao, _), shade in zip(uploaded, shades):
            if shade is None or part.alpha < 0.95:
                continue
            prog["u_color"].value = ((1 + min(shade, 253)) / 255.0, 0.0, 0.0)
            vao.render()
        return np.frombuffer(self._idfb.read(components=4, alignment=1), dtype=np.uint8)[::4].copy()

    def _camera(self, lay: Layout, rng: np.random.Generator, cfg: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
        """(view-projection matrix, eye): the layout's camera, the main model shifted off the frame centre."""
        eye, target = np.asarray(lay.eye, float), np.asarray(lay.target, float)
        fwd = target - eye
        dist = float(np.linalg.norm(fwd))
        fwd /= dist
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right) + 1e-12
        up_cam = np.cross(right, fwd)
        shift = rng.uniform(-cfg.offset, cfg.offset, 2) * 2.0 * dist * math.tan(math.radians(lay.fov) / 2.0)
        aim = target - (shift[0] * right + shift[1] * up_cam)
        up = math.cos(lay.roll) * np.array([0.0, 1.0, 0.0]) + math.sin(lay.roll) * right
        far = math.hypot(lay.x1 - lay.x0, lay.z1 - lay.z0, lay.height) + 1.0
        return perspective(lay.fov, 0.05, far) @ look_at(eye, aim, up), eye

    def _lights(self, lay: Layout, rng: np.random.Generator, cfg: SceneConfig) -> dict:
        """Uniforms of the room's light: daylight from the window, a warm-to-cool ambient, a weak fill."""
        day = _kelvin_tint(rng) * 0.5 + np.array([0.5, 0.5, 0.5])  # daylight leans neutral
        amb = float(rng.uniform(*cfg.ambient)) * _kelvin_tint(rng)
        return {"u_light_dir": tuple(lay.light_dir), "u_light_col": tuple(day * rng.uniform(*cfg.light_intensity)),
                "u_sky": tuple(amb), "u_ground": tuple(amb * rng.uniform(0.5, 0.8)),
                "u_fill_col": tuple(day * rng.uniform(0.05, 0.15))}

    # -- the room -----------------------------------------------------------------------------
    def _room_parts(self, lay: Layout, rng: np.random.Generator, pool: list[Background], textures: list[Texture],
                    cfg: SceneConfig) -> list[Part]:
        indoor = [t for t in textures if t.name not in cfg.outdoor_textures] or textures
        floors = [t for t in indoor if t.category == "Floor"]
        walls = [t for t in indoor if t.category == "Wall"]
        floor = floors[int(rng.integers(len(floors)))]
        corners = np.array([[lay.x0, 0, lay.z0], [lay.x1, 0, lay.z0], [lay.x1, 0, lay.z1], [lay.x0, 0, lay.z1]])
        uv01 = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        parts = [_quad(corners, (0, 1, 0), uv01, (1, 1, 1), _floor_image(lay, floor, rng, cfg), specular=0.15)]
        ceiling = corners + [0.0, lay.height, 0.0]
        parts.append(_quad(ceiling, (0, -1, 0), uv01, np.full(3, rng.uniform(1.2, 1.6))))  # lit by the room's bounce
        if rng.random() < cfg.paint_prob:
            paint = np.asarray(_PAINT[int(rng.integers(len(_PAINT)))]) * rng.uniform(0.9, 1.05)
            finish, tile = (paint, None), None
        else:
            tile = walls[int(rng.integers(len(walls)))]
            finish = ((1.0, 1.0, 1.0), _rgba(tile.tile))
        for wall in ("back", "front", "left", "right"):
            parts += _wall_parts(lay, wall, [o for o in lay.openings if o.wall == wall], finish, tile)
        frame = _FRAME[int(rng.integers(len(_FRAME)))]
        for o in lay.openings:
            parts += self._beyond(lay, o, rng, pool, cfg, finish[0])
            if o.item is None:
                parts += _frame(lay, o, frame, mullion=rng.random() < 0.5)
        return parts

    def _beyond(self, lay: Layout, o: Opening, rng: np.random.Generator, pool: list[Background], cfg: SceneConfig,
                paint) -> list[Part]:
        """What an opening shows: a real outdoor photo behind a window, a dim next room behind a door."""
        margin = 0.6
        corners, normal = _wall_quad(o.wall, lay, o.u0 - margin, o.u1 + margin, o.y0 - margin, o.y1 + margin, -0.3)
        uv01 = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        if o.item is not None and lay.items[o.item].label == "door":
            return [_quad(corners, normal, uv01, np.asarray(paint) * rng.uniform(0.4, 0.7))]
        photos = [b for b in pool if b.name.startswith(OUTDOOR_PACKAGE + ":")] or pool  # nature photographs
        src = photos[int(rng.integers(len(photos)))].image
        side = int(min(src.size) * rng.uniform(0.4, 0.9))
        x, y = int(rng.integers(0, src.size[0] - side + 1)), int(rng.integers(0, src.size[1] - side + 1))
        view = src.crop((x, y, x + side, y + side)).resize((128, 128), Image.Resampling.BILINEAR)
        return [_quad(corners, normal, uv01, np.full(3, rng.uniform(*cfg.window_brightness)), _rgba(view))]


def _wall_parts(lay: Layout, wall: str, holes: list[Opening], finish, tile: Texture | None) -> list[Part]:
    """One wall as rectangles around its openings (a grid cut at their edges, holes left out)."""
    lo, hi = (lay.x0, lay.x1) if wall in ("back", "front") else (lay.z0, lay.z1)
    us = sorted({lo, hi, *(min(max(v, lo), hi) for o in holes for v in (o.u0, o.u1))})
    ys = sorted({0.0, lay.height, *(min(max(v, 0.0), lay.height) for o in holes for v in (o.y0, o.y1))})
    color, texture = finish
    out = []
    for ua, ub in zip(us, us[1:]):
        for ya, yb in zip(ys, ys[1:]):
            um, ym = (ua + ub) / 2, (ya + yb) / 2
            if ub - ua < 1e-6 or yb - ya < 1e-6 or any(o.u0 < um < o.u1 and o.y0 < ym < o.y1 for o in holes):
                continue
            corners, normal = _wall_quad(wall, lay, ua, ub, ya, yb)
            uv = np.array([[ua, ya], [ub, ya], [ub, yb], [ua, yb]])
            uv = uv / [tile.width, tile.height] if tile is not None else uv * 0.0
            out.append(_quad(corners, normal, uv, color, texture))
    return out


def _frame(lay: Layout, o: Opening, color, mullion: bool) -> list[Part]:
    """A bare window's frame: four bars around the opening (and a middle bar), just off the wall."""
    f = 0.06
    bars = [(o.u0 - f, o.u0, o.y0 - f, o.y1 + f), (o.u1, o.u1 + f, o.y0 - f, o.y1 + f),
            (o.u0, o.u1, o.y0 - f, o.y0), (o.u0, o.u1, o.y1, o.y1 + f)]
    if mullion:
        mid = (o.u0 + o.u1) / 2
        bars.append((mid - f / 2, mid + f / 2, o.y0, o.y1))
    zero = np.zeros((4, 2))
    return [_quad(*_wall_quad(o.wall, lay, *bar, 0.01), zero, color, specular=0.2) for bar in bars]


def _floor_image(lay: Layout, tex: Texture, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """The floor as one texture: the catalogue tile repeated at its real size, soft contact shadows
    under the models standing on it (pushed away from the light). RGBA, row 0 at z1 (GL's v = 0 is z0)."""
    w_m, d_m = lay.x1 - lay.x0, lay.z1 - lay.z0
    ppm = float(min(64.0, 512.0 / max(w_m, d_m)))
    size = (max(2, math.ceil(w_m * ppm)), max(2, math.ceil(d_m * ppm)))
    tw, th = max(2, round(tex.width * ppm)), max(2, round(tex.height * ppm))
    tile = tex.tile.resize((tw, th), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", size)
    ox, oy = int(rng.integers(tw)), int(rng.integers(th))
    for y in range(-oy, size[1], th):
        for x in range(-ox, size[0], tw):
            canvas.paste(tile, (x, y))
    shadow = Image.new("L", size, 0)
    draw = ImageDraw.Draw(shadow)
    away = -lay.light_dir[[0, 2]] * 0.08
    for p in lay.items:
        if p.on is None and p.y < 0.3 and not p.size.door_or_window:
            c = (p.corners(0.02) + away - [lay.x0, lay.z0]) * ppm
            draw.polygon([tuple(v) for v in c], fill=255)
    shadow = shadow.filter(ImageFilter.GaussianBlur(0.08 * ppm))
    dark = rng.uniform(*cfg.shadow) * np.asarray(shadow, np.float32)[..., None] / 255.0
    img = np.asarray(canvas, np.float32) * (1.0 - dark) * rng.uniform(0.8, 1.1)
    rgb = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return _rgba(Image.fromarray(rgb[::-1]))
