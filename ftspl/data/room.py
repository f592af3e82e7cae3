"""Where things stand in a scene photo: a furnished room around one labelled model, and the phone that shoots it.

Pure geometry (numpy only): :func:`plan_room` draws, from the generator it is
given, a room (floor, four walls, a ceiling, a window and the openings of any
door or window model), the labelled *main* model near a wall, 2-6 *other*
models of other classes around it, in front of it (between it and the camera)
or on top of a table or cabinet, and a camera at a phone's height looking at
the main model. Models keep their catalogue sizes (:mod:`ftspl.data.catalogue`),
stand on the floor or on what they are put on, and never overlap. The
renderer (:mod:`ftspl.data.scenes`) turns a :class:`Layout` into a photo and
may drop the models in front when they hide too much of the main one.
The records a plan is made of (:class:`SceneConfig`, :class:`Candidate`,
:class:`Placed`, :class:`Opening`, :class:`Layout`) are in
:mod:`ftspl.data.room_layout`; this module holds the placement rules and
re-exports the records.

Coordinates: metres, Y up, the room spans ``x0..x1`` by ``z0..z1``; the main
model's back faces the *back* wall (``z = z0``) and the camera looks at it from
the +Z side. A model's yaw turns its front (+Z) towards ``(sin yaw, cos yaw)``.
"""

from __future__ import annotations

import math

import numpy as np

from ftspl.data.room_layout import Candidate, Layout, Opening, Placed, SceneConfig

__all__ = ["AGAINST_WALL", "SUPPORTS", "Candidate", "Layout", "Opening", "Placed", "SceneConfig", "overlap", "plan_room"]

#: Classes that stand with their back to a wall (the others stand free)
AGAINST_WALL = frozenset({
    "bathtub", "bed", "bookshelf", "cabinet", "desk", "door", "dresser", "mantel", "piano", "radiator",
    "range_hood", "refrigerator", "sink", "sofa", "stove", "toilet", "tv_stand", "wardrobe", "washing_machine",
    "window",
})
#: Classes that things are put on (a bottle on a table, a plant on a cabinet)
SUPPORTS = frozenset({"cabinet", "desk", "dresser", "night_stand", "stool", "table", "tv_stand"})
WALLS = ("back", "left", "right", "front")


def overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex footprints (corners in order) overlap (separating axis test)."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


def _wall_point(wall: str, u: float, inset: float, lay: Layout) -> tuple[float, float, float]:
    """(x, z, yaw) of a model against ``wall`` at ``u``, its back ``inset`` metres in front of the wall."""
    if wall == "back":
        return u, lay.z0 + inset, 0.0
    if wall == "front":
        return u, lay.z1 - inset, math.pi
    if wall == "left":
        return lay.x0 + inset, u, math.pi / 2
    return lay.x1 - inset, u, -math.pi / 2


def _wall_span(wall: str, lay: Layout) -> tuple[float, float]:
    return (lay.x0, lay.x1) if wall in ("back", "front") else (lay.z0, lay.z1)


def _fits(p: Placed, lay: Layout, eye: np.ndarray | None, clear: float = 0.3) -> bool:
    """Inside the room (a door or window may sink into its wall), clear of the floor models and the camera."""
    sink = p.size.depth / 2.0 if p.size.door_or_window else 0.0
    c = p.corners()
    if (c[:, 0].min() < lay.x0 - sink - 1e-3 or c[:, 0].max() > lay.x1 + sink + 1e-3
            or c[:, 1].min() < lay.z0 - sink - 1e-3 or c[:, 1].max() > lay.z1 + sink + 1e-3):
        return False
    if eye is not None and overlap(p.corners(clear), _square(eye[0], eye[2], 0.05)):
        return False
    if p.top > lay.height - 0.05:
        return False
    return not any(q.on is None and overlap(c, q.corners(0.02)) for q in lay.items)


def _square(x: float, z: float, h: float) -> np.ndarray:
    return np.array([[x - h, z - h], [x + h, z - h], [x + h, z + h], [x - h, z + h]])


def _on_top(p: Placed, lay: Layout, rng: np.random.Generator) -> bool:
    """Put ``p`` on a model that takes things on top and is wide enough; False when none is."""
    hosts = [i for i, q in enumerate(lay.items) if q.label in SUPPORTS and q.size.drop_on_top and q.on is None
             and q.role != "front"
             and min(q.size.width, q.size.depth) > 0.9 * max(p.size.width, p.size.depth)
             and q.y + q.size.drop_on_top + p.size.height < lay.height - 0.1]
    for i in rng.permutation(hosts) if hosts else []:
        q = lay.items[int(i)]
        room_x, room_z = max(0.0, (q.size.width - p.size.width) / 2), max(0.0, (q.size.depth - p.size.depth) / 2)
        lx, lz = rng.uniform(-room_x, room_x) * 0.8, rng.uniform(-room_z, room_z) * 0.8
        c, s = math.cos(q.yaw), math.sin(q.yaw)
        p.x, p.z = q.x + lx * c + lz * s, q.z - lx * s + lz * c
        p.y, p.yaw, p.on, p.role = q.y + q.size.drop_on_top, q.yaw + rng.uniform(-0.6, 0.6), int(i), "on_top"
        if not any(r.on == i and overlap(p.corners(), r.corners()) for r in lay.items):
            return True
    return False


def _place_other(p: Placed, lay: Layout, rng: np.random.Generator, cfg: SceneConfig) -> bool:
    """Try a few spots for one other model; True when one fits."""
    main, eye = lay.main, lay.eye
    if p.size.door_or_window:
        return _place_in_wall(p, lay, rng)
    if p.size.height < cfg.small and rng.random() < cfg.on_top_prob and _on_top(p, lay, rng):
        return True
    p.on, p.y = None, p.size.elevation
    walled = p.label in AGAINST_WALL
    for _ in range(12):
        roll = rng.random()
        if not walled and roll < cfg.front_share:  # between the camera and the main model, a little aside
            p.role = "front"
            t = rng.uniform(*cfg.front_at)
            ground = main.centre[[0, 2]] + t * (eye[[0, 2]] - main.centre[[0, 2]])
            side = np.array([eye[2] - main.z, main.x - eye[0]])
            side /= np.linalg.norm(side) + 1e-9
            ground = ground + side * rng.uniform(-1, 1) * (0.6 * main.radius + 0.5 * p.size.width)
            p.x, p.z, p.yaw = float(ground[0]), float(ground[1]), float(rng.uniform(-math.pi, math.pi))
        elif not walled or roll < 0.5:  # beside the main model (or its support)
            p.role = "beside"
            side = 1 if rng.random() < 0.5 else -1
            mc = lay.floor_main.corners()
            edge = mc[:, 0].max() if side > 0 else mc[:, 0].min()
            p.yaw = 0.0 if walled else float(rng.uniform(-0.8, 0.8))
            p.x = edge + side * (rng.uniform(0.05, 0.6) + p.size.width / 2)
            back = 0.01 if walled else rng.uniform(0.05, 1.2)
            p.z = lay.z0 + back + p.size.depth / 2
        else:  # against any wall the camera may see
            p.role = "wall"
            wall = ("back", "left", "right")[int(rng.integers(3))]
            lo, hi = _wall_span(wall, lay)
            p.x, p.z, p.yaw = _wall_point(wall, rng.uniform(lo, hi), 0.01 + p.size.depth / 2, lay)
        if _fits(p, lay, eye, cfg.front_clear if p.role == "front" else 0.3):
            return True
    return False


def _place_in_wall(p: Placed, lay: Layout, rng: np.random.Generator) -> bool:
    """A door or window model in the back or a side wall, at its catalogue elevation, clear of other openings."""
    for _ in range(8):
        wall = ("back", "left", "right")[int(rng.integers(3))]
        lo, hi = _wall_span(wall, lay)
        half = p.size.width / 2
        if hi - lo < 2 * half + 0.2:
            continue
        u = rng.uniform(lo + half + 0.1, hi - half - 0.1)
        p.x, p.z, p.yaw = _wall_point(wall, u, 0.0, lay)
        p.y, p.role, p.on = p.size.elevation, "wall", None
        hole = Opening(wall, u - half, u + half, p.y, p.top, len(lay.items))
        if _fits(p, lay, lay.eye) and not any(_clash(hole, o) for o in lay.openings):
            lay.openings.append(hole)
            return True
    return False


def _clash(a: Opening, b: Opening) -> bool:
    return a.wall == b.wall and a.u0 < b.u1 + 0.1 and b.u0 < a.u1 + 0.1


def _blocked(hole: Opening, lay: Layout) -> bool:
    """Whether a model stands against the wall where a bare window would be (above its sill)."""
    for p in lay.items:
        if p.on is not None or p.top <= hole.y0:
            continue
        c = p.corners()
        if hole.wall in ("back", "front"):
            near = c[:, 1].min() - lay.z0 < 0.3 if hole.wall == "back" else lay.z1 - c[:, 1].max() < 0.3
            span = (c[:, 0].min(), c[:, 0].max())
        else:
            near = c[:, 0].min() - lay.x0 < 0.3 if hole.wall == "left" else lay.x1 - c[:, 0].max() < 0.3
            span = (c[:, 1].min(), c[:, 1].max())
        if near and span[0] < hole.u1 and hole.u0 < span[1]:
            return True
    return False


def plan_room(main: Candidate, others: list[Candidate], supports: list[Candidate], rng: np.random.Generator,
              cfg: SceneConfig = SceneConfig()) -> Layout:
    """A room around ``main`` with some of ``others`` in it and the camera that photographs it.

    ``others``: models of other classes (the pool, already filtered by the caller's split rules);
    ``supports``: those a small main model may stand on (of the :data:`SUPPORTS` classes, wider
    than it). Deterministic in ``rng``.
    """
    s = main.size
    m = Placed(main.key, main.label, s, "main", y=s.elevation)
    items = [m]
    support = None
    if s.height < cfg.small and not s.door_or_window and supports and rng.random() < cfg.on_top_prob:
        fit = [c for c in supports if c.label in SUPPORTS and c.size.drop_on_top
               and min(c.size.width, c.size.depth) > max(s.width, s.depth)]
        if fit:
            c = fit[int(rng.integers(len(fit)))]
            support = Placed(c.key, c.label, c.size, "support")
    base = support or m
    wall_backed = base.label in AGAINST_WALL or base.size.door_or_window
    base.yaw = 0.0 if wall_backed else math.radians(rng.uniform(-cfg.yaw_free_deg, cfg.yaw_free_deg))
    if support is not None:
        m.yaw = support.yaw + rng.uniform(-0.5, 0.5)
        m.x, m.z = (rng.uniform(-0.3, 0.3, 2) * [support.size.width - s.width, support.size.depth - s.depth]).tolist()
        m.y = support.size.drop_on_top
        m.on = 1
        items.append(support)
    # camera: around the main model's front, framing its bounding sphere
    fov = float(rng.uniform(*cfg.fov_deg))
    fill = float(rng.uniform(*cfg.fill))
    dist = m.radius / (math.tan(math.radians(fov) / 2) * fill)
    az = base.yaw + math.radians(float(np.clip(rng.normal(0, cfg.azimuth_sigma_deg), -cfg.azimuth_max_deg,
                                               cfg.azimuth_max_deg)))
    az = float(np.clip(az, -math.radians(85), math.radians(85)))
    target = m.centre
    dy = float(np.clip(rng.uniform(*cfg.eye_height) - target[1], -dist * math.sin(math.radians(20)),
                       dist * math.sin(math.radians(cfg.max_pitch_deg))))
    flat = math.sqrt(max(dist**2 - dy**2, 1e-6))
    eye = target + np.array([flat * math.sin(az), dy, flat * math.cos(az)])
    eye[1] = max(eye[1], 0.3)
    # room: the back wall behind the main model (or its support), the camera inside with room to spare
    bc = base.corners()
    gap = 0.01 if wall_backed else float(rng.uniform(*cfg.wall_gap))
    if base.size.door_or_window:
        gap = -base.size.depth / 2
    z0 = bc[:, 1].min() - gap
    x0 = min(bc[:, 0].min(), eye[0]) - rng.uniform(*cfg.margin)
    x1 = max(bc[:, 0].max(), eye[0]) + rng.uniform(*cfg.margin)
    z1 = max(bc[:, 1].max(), eye[2]) + rng.uniform(*cfg.margin)
    if x1 - x0 < cfg.min_room:
        extra = cfg.min_room - (x1 - x0)
        left = rng.uniform(0, extra)
        x0, x1 = x0 - left, x1 + extra - left
    z1 = max(z1, z0 + cfg.min_room)
    tallest = max(p.top for p in items)
    height = max(float(rng.uniform(*cfg.room_height)), tallest + 0.3, eye[1] + 0.4)
    lay = Layout(float(x0), float(x1), float(z0), float(z1), float(height), items, eye=eye, target=target, fov=fov)
    if base.size.door_or_window:
        lay.openings.append(Opening("back", bc[:, 0].min(), bc[:, 0].max(), base.y, base.top, 0))
    # the others: as many as drawn, of classes other than the main's, each model once
    n = int(rng.integers(cfg.others[0], cfg.others[1] + 1))
    used = {p.key for p in items}
    pool = [c for c in others if c.key not in used and c.label != main.label]
    for i in rng.permutation(len(pool)) if pool else []:
        if len(items) - 1 >= n:
            break
        c = pool[int(i)]
        if c.key in used:
            continue
        p = Placed(c.key, c.label, c.size, "other")
        if _place_other(p, lay, rng, cfg):
            items.append(p)
            used.add(c.key)
    # a bare window for daylight, where no model stands against the wall
    if rng.random() < cfg.window_prob:
        for _ in range(6):
            wall = ("back", "left", "right")[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
            lo, hi = _wall_span(wall, lay)
            w, h = rng.uniform(0.8, 1.8), rng.uniform(1.0, 1.5)
            if hi - lo < w + 0.4:
                continue
            u = rng.uniform(lo + 0.2, hi - 0.2 - w)
            sill = rng.uniform(0.7, 1.0)
            hole = Opening(wall, u, u + w, sill, min(sill + h, height - 0.15))
            if not _blocked(hole, lay) and not any(_clash(hole, o) for o in lay.openings):
                lay.openings.append(hole)
                break
    # daylight from the first window (else from a side), the shot's framing and roll
    light_from = _opening_centre(lay.openings[-1], lay) if lay.openings else np.array([x0, 1.5, target[2]])
    flat_dir = light_from[[0, 2]] - target[[0, 2]]
    flat_dir /= np.linalg.norm(flat_dir) + 1e-9
    el = math.radians(float(rng.uniform(*cfg.light_elevation_deg)))
    lay.light_dir = np.array([flat_dir[0] * math.cos(el), math.sin(el), flat_dir[1] * math.cos(el)])
    lay.roll = math.radians(float(rng.uniform(-cfg.roll_deg, cfg.roll_deg)))
    return lay


def _opening_centre(o: Opening, lay: Layout) -> np.ndarray:
    u, y = (o.u0 + o.u1) / 2, (o.y0 + o.y1) / 2
    x, z, _ = _wall_point(o.wall, u, 0.0, lay)
    return np.array([x, y, z])
