"""The records of a scene photo's plan: its random ranges, the models a room may hold, and the room itself.

:class:`SceneConfig` holds the ranges :func:`ftspl.data.room.plan_room` draws
from; :class:`Candidate` is a catalogue model a scene may use; a
:class:`Layout` is a planned room: its walls, the :class:`Placed` models
(the main one first) and the :class:`Opening` holes in its walls, with the
camera and the daylight. The planner (:mod:`ftspl.data.room`, which
re-exports these names) fills them in and the renderer (:mod:`ftspl.data.scenes`)
reads them. They live apart from the planner's placement rules so that what a
plan is reads on its own, beside how one is drawn.

Coordinates: metres, Y up, the room spans ``x0..x1`` by ``z0..z1``; a model's
yaw turns its front (+Z) towards ``(sin yaw, cos yaw)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ftspl.data.catalogue import CatalogueSize


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of a scene photo's random choices (uniform unless said otherwise)."""

    others: tuple[int, int] = (2, 6)  #: other models per scene, each of another class than the main one
    fill: tuple[float, float] = (0.5, 0.95)  #: the main model's bounding-sphere diameter / frame height
    fov_deg: tuple[float, float] = (40.0, 65.0)  #: vertical field of view (a phone's main camera, cropped square)
    eye_height: tuple[float, float] = (1.0, 1.7)  #: camera height in metres: sitting to standing
    max_pitch_deg: float = 55.0  #: the steepest look down at the main model
    azimuth_sigma_deg: float = 40.0  #: camera direction around the main model's front, normal
    azimuth_max_deg: float = 80.0
    yaw_free_deg: float = 30.0  #: a free-standing main model turns up to this far from the back wall's normal
    offset: float = 0.15  #: the largest shift of the main model from the frame centre, in frame heights
    roll_deg: float = 3.0
    room_height: tuple[float, float] = (2.4, 3.0)
    wall_gap: tuple[float, float] = (0.2, 1.2)  #: a free-standing main model's distance from the wall behind it
    margin: tuple[float, float] = (0.3, 1.5)  #: room beyond the camera and beside the main model
    min_room: float = 2.6  #: the shortest side of a room, metres
    front_share: float = 0.35  #: share of the other models put between the camera and the main model
    front_at: tuple[float, float] = (0.15, 0.5)  #: where, as a fraction of the way from the main model to the camera
    front_clear: float = 0.8  #: metres between the camera and a model in front of it, at least
    small: float = 0.6  #: metres: a model lower than this may stand on a table or cabinet
    on_top_prob: float = 0.8  #: probability that a small model stands on something (when something fits)
    max_main_height: float = 3.0  #: a taller main model (a tree) gets no scene photos: no room holds it
    max_other_height: float = 2.3  #: other models taller than this (trees, street lamps) stay out of rooms
    max_other_side: float = 2.5  #: ... and longer than this (cars)
    min_visible: float = 0.5  #: models in front are dropped until this share of the main model shows
    window_prob: float = 0.9  #: a window in the back or a side wall (daylight and an outdoor view)
    paint_prob: float = 0.75  #: painted walls, else a wall texture of the catalogue
    outdoor_textures: tuple[str, ...] = ("grass", "pebbles", "pavingStone", "boxTree")  #: not in rooms
    light_elevation_deg: tuple[float, float] = (15.0, 50.0)  #: daylight through the window
    light_intensity: tuple[float, float] = (0.45, 1.0)
    ambient: tuple[float, float] = (0.3, 0.55)
    window_brightness: tuple[float, float] = (0.8, 1.5)  #: the outdoor view's shade (it is lit like a wall, too)
    shadow: tuple[float, float] = (0.3, 0.6)  #: darkness of the soft contact shadows under models on the floor
    other_max_faces: int = 60_000  #: heavier models are not used as other models (render time)
    max_texture: int = 256  #: texture maps are downscaled to this side (models are small in a room)


@dataclass(frozen=True)
class Candidate:
    """A catalogue model a scene may use."""

    key: str
    label: str
    size: CatalogueSize


@dataclass
class Placed:
    """A model in the room."""

    key: str
    label: str
    size: CatalogueSize
    role: str  #: main, support (under a small main model), front, beside, wall, free, on_top
    x: float = 0.0
    z: float = 0.0
    yaw: float = 0.0
    y: float = 0.0  #: bottom above the floor
    on: int | None = None  #: index of the model it stands on

    @property
    def top(self) -> float:
        return self.y + self.size.height

    @property
    def radius(self) -> float:
        s = self.size
        return 0.5 * math.sqrt(s.width**2 + s.height**2 + s.depth**2)

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.x, self.y + self.size.height / 2.0, self.z])

    def corners(self, grow: float = 0.0) -> np.ndarray:
        """The footprint's corners (4, 2) as (x, z), grown by ``grow`` on every side."""
        hw, hd = self.size.width / 2.0 + grow, self.size.depth / 2.0 + grow
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        local = np.array([[-hw, -hd], [hw, -hd], [hw, hd], [-hw, hd]])
        return np.stack([self.x + local[:, 0] * c + local[:, 1] * s, self.z - local[:, 0] * s + local[:, 1] * c], 1)


@dataclass(frozen=True)
class Opening:
    """A hole in a wall: a window or door model stands in it, or a bare window shows the outdoor view."""

    wall: str  #: back, left, right or front
    u0: float  #: along the wall: x on the back and front walls, z on the side walls
    u1: float
    y0: float
    y1: float
    item: int | None = None  #: the model in it; None: a bare window with a frame


@dataclass
class Layout:
    x0: float
    x1: float
    z0: float
    z1: float
    height: float
    items: list[Placed]  #: items[0] is the main model
    openings: list[Opening] = field(default_factory=list)
    eye: np.ndarray = field(default_factory=lambda: np.zeros(3))
    target: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fov: float = 50.0
    roll: float = 0.0  #: radians
    light_dir: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))  #: towards the light

    @property
    def main(self) -> Placed:
        return self.items[0]

    @property
    def floor_main(self) -> Placed:
        """The main model, or what it stands on."""
        return self.items[self.main.on] if self.main.on is not None else self.main

    def keys(self) -> list[str]:
        return [p.key for p in self.items]

    def drop(self, indices: set[int]) -> None:
        """Remove the models at ``indices`` (never the main one), with what stands on them and their openings."""
        gone = set(indices) - {0}
        for i, p in enumerate(self.items):
            if p.on in gone:
                gone.add(i)
        index = {}
        kept = []
        for i, p in enumerate(self.items):
            if i not in gone:
                index[i] = len(kept)
                kept.append(p)
        for p in kept:
            p.on = index[p.on] if p.on is not None else None
        self.items = kept
        self.openings = [replace(o, item=index[o.item]) if o.item is not None else o
                         for o in self.openings if o.item not in gone]
