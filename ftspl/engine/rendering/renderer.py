"""Headless multi-view renderer (moderngl over EGL; no display, no torch).

Why it looks like this:

* **One GL context per Renderer.** Creating an EGL context costs tens of
  milliseconds, so a Renderer is made once per worker and reused for every
  mesh; its framebuffers are made once too (the spec fixes their size).
* **All views in one draw.** The mesh is uploaded once and drawn *instanced*,
  one instance per camera, into a tile of one atlas framebuffer (``cols x rows``
  tiles of ``S x S``). ``gl_ClipDistance`` clips each instance to its own tile,
  so geometry never bleeds into a neighbour, and one read-back gives every
  view. On llvmpipe the cost is per-triangle work either way; on a GPU it saves
  eleven draw/read round trips. The atlas is multisampled (and resolved before
  the read-back) only when the spec asks for MSAA samples; the default asks for
  none, because on llvmpipe MSAA triples the render time.
* **Flat shading from screen-space derivatives.** Face normals are
  ``cross(dFdx(p), dFdy(p))`` of the world position, so missing, smoothed or
  wrong vertex normals in files from the wild do not matter, and no per-face
  vertex duplication is needed (indexed ``uint32`` draw keeps huge meshes
  small). The normal is flipped towards the camera (two-sided lighting),
  because many gallery meshes have inconsistent winding.
* **Deterministic.** Same driver + same spec -> same bytes, in and across
  processes (no time, randomness or uninitialised memory is involved).
* **Two looks, one lighting.** In the ``grey`` look every shape wears the
  spec's grey. In the ``materials`` look a shape loaded with its own materials
  (:class:`~ftspl.engine.loading.materials.Materials`) is drawn with a second
  program, one draw per material run: base colour x vertex colour x texture
  (texels with alpha under 0.5 are cut out, and a texture is not modulated by a
  near-black colour, as in the photo domain's renderer), under the same lights.
  A shape without materials takes the grey program in both looks, so its
  views are the grey look's bytes.

The look (grey Phong material or the shape's own, headlight + fixed key light,
white background, MSAA samples) comes from :class:`~ftspl.engine.constants.RenderSpec`
only, so train, export and serve render identical views.
"""

from __future__ import annotations

import io
import logging
import math
import sys

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import RenderError
from ftspl.engine.loading.materials import Materials
from ftspl.engine.loading.meshes import Mesh, normalize
from ftspl.engine.rendering.shaders import program_sources

log = logging.getLogger(__name__)

__all__ = ["Renderer", "camera_positions", "make_preview", "reference_mesh", "render_reference"]

_EGL_HINT = "install the EGL/Mesa libraries: apt-get install libegl1 libgl1-mesa-dri libegl-mesa0"
_GL_CLIP_DISTANCE0 = 0x3000  # GL enum; moderngl has no named flag for it

def camera_positions(spec: RenderSpec) -> np.ndarray:
    """World positions (V, 3) of the cameras.

    Azimuth 0 puts the camera on the +Z axis; azimuth grows counter-clockwise
    seen from above (towards +X); elevation lifts it towards +Y.
    """
    dist = spec.camera_distance * spec.normalize_radius
    az = np.radians(spec.azimuth_start_deg + spec.azimuth_step_deg * np.arange(spec.views))
    el = math.radians(spec.elevation_deg)
    return np.stack(
        [dist * math.cos(el) * np.sin(az), np.full_like(az, dist * math.sin(el)), dist * math.cos(el) * np.cos(az)],
        axis=1,
    )


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray | None = None) -> np.ndarray:
    """World-to-camera matrix looking from ``eye`` at ``target`` (the origin) with ``up`` (+Y).

    Shared with the photo-domain renderer (``ftspl.data.photo_domain``).
    """
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    up = np.array([0.0, 1.0, 0.0]) if up is None else np.asarray(up, dtype=np.float64)
    if abs(float(forward @ up)) > 0.999 * float(np.linalg.norm(up)):  # looking along up: any stable up works
        up = np.array([0.0, 0.0, -1.0 if forward[1] < 0 else 1.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def perspective(fov_deg: float, near: float, far: float) -> np.ndarray:
    """OpenGL projection matrix for a vertical field of view in degrees."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    proj = np.zeros((4, 4))
    proj[0, 0] = proj[1, 1] = f
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2.0 * far * near / (near - far)
    proj[3, 2] = -1.0
    return proj


def _atlas_grid(views: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(views))
    return cols, math.ceil(views / cols)


#: What a process that already uses torch loads before its first EGL context (see below).
LLVM_FIRST_MODULE = "torch._dynamo"
_egl_contexts_made = False  #: whether this process has made an EGL context (set by Renderer._create_context)


def _load_torch_llvm_first() -> bool:
    """In a process that already uses torch, load Triton before Mesa's llvmpipe; True if it did.

    Both bring their own LLVM; Triton (loaded lazily by torch._dynamo, which
    torch.optim and the ONNX exporter import) segfaults when it loads after an
    EGL context exists (seen with torch 2.14.1 + Mesa 22.3), and is safe the
    other way round. The engine never imports torch itself: this only runs
    where the caller already did (training, export, tests), and a torch-free
    process (``index add``, ``query``, ``serve``) returns False here and keeps
    ``torch`` out of ``sys.modules`` (tests/test_api.py renders and queries in
    a fresh interpreter and checks both ways).

    Where torch arrived only after this process made an EGL context (a test
    session that renders, then imports torch for an export), loading Triton now
    is the crashing order itself, so it is left out (False): nothing is loaded
    that the caller did not load.
    """
    if "torch" not in sys.modules:
        return False
    if _egl_contexts_made and LLVM_FIRST_MODULE not in sys.modules:
        log.debug("torch was imported after an EGL context was made; not loading %s now", LLVM_FIRST_MODULE)
        return False
    import importlib

    importlib.import_module(LLVM_FIRST_MODULE)
    return True


class Renderer:
    """Renders a normalised :class:`Mesh` into ``spec.views`` RGB views.

    Not thread-safe: use one Renderer per thread/process, from the thread that
    created it (the EGL context is current there). Use as a context manager
    or call :meth:`close`.
    """

    def __init__(self, spec: RenderSpec = RenderSpec()) -> None:
        self.spec = spec
        if spec.views < 1 or spec.image_size < 1:
            raise ValueError("RenderSpec needs views >= 1 and image_size >= 1")
        self.loaded_torch_llvm_first = _load_torch_llvm_first()  #: False in every torch-free process
        self._ctx = self._create_context()
        try:
            self._setup()
        except Exception:
            self._ctx.release()
            raise

    @staticmethod
    def _create_context():
        try:
            import moderngl
        except ImportError as exc:  # the wheel is a hard dependency, but be explicit
            raise RenderError(f"cannot create a headless OpenGL (EGL) context: {exc}; {_EGL_HINT}") from exc
        global _egl_contexts_made
        try:
            ctx = moderngl.create_standalone_context(backend="egl", require=330)
            _egl_contexts_made = True
            return ctx
        # glcontext raises a bare ``Exception`` (e.g. "libEGL.so not loaded",
        # "eglInitialize failed"), so nothing narrower can be caught here.
        except Exception as exc:  # noqa: BLE001 - third-party boundary, documented above
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise RenderError(f"cannot create a headless OpenGL (EGL) context: {reason}; {_EGL_HINT}") from exc

    def _setup(self) -> None:
        import moderngl

        spec, ctx = self.spec, self._ctx
        size = spec.image_size
        self._cols, self._rows = _atlas_grid(spec.views)
        width, height = self._cols * size, self._rows * size
        max_dim = min(ctx.info["GL_MAX_RENDERBUFFER_SIZE"], *ctx.info["GL_MAX_VIEWPORT_DIMS"])
        if max(width, height) > max_dim:
            raise RenderError(
                f"a {self._cols}x{self._rows} atlas of {size}px views ({width}x{height}) exceeds this "
                f"GPU's limit of {max_dim}px; use a smaller image_size"
            )
        samples = spec.samples if spec.samples > 1 else 0
        if samples > ctx.max_samples:
            log.warning("MSAA %dx not supported here, using %dx", samples, ctx.max_samples)
            samples = ctx.max_samples
        self._msaa = ctx.framebuffer(
            color_attachments=[ctx.renderbuffer((width, height), 4, samples=samples)],
            depth_attachment=ctx.depth_renderbuffer((width, height), samples=samples),
        )
        self._resolved = (
            ctx.framebuffer(color_attachments=[ctx.renderbuffer((width, height), 4)]) if samples else self._msaa
        )
        vertex, fragment = program_sources(spec.views, materials=False)
        self._prog = ctx.program(vertex_shader=vertex, fragment_shader=fragment)
        self._paint_prog = None  #: the ``materials`` look's program (None in the grey look)
        if spec.wants_materials:
            vertex, fragment = program_sources(spec.views, materials=True)
            self._paint_prog = ctx.program(vertex_shader=vertex, fragment_shader=fragment)
        for prog in (self._prog, self._paint_prog):
            if prog is not None:
                self._set_uniforms(prog)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE)
        for i in range(4):
            ctx.enable_direct(_GL_CLIP_DISTANCE0 + i)
        self._moderngl_error = moderngl.Error

    def _set_uniforms(self, prog) -> None:
        spec = self.spec
        eyes = camera_positions(spec)
        r, d = spec.normalize_radius, spec.camera_distance * spec.normalize_radius
        near = max(d - 1.05 * r, 0.01 * d)
        proj = perspective(spec.fov_deg, near, d + 1.05 * r)
        view_proj = np.stack([proj @ look_at(eye) for eye in eyes])
        # GLSL matrices are column-major: upload each transposed.
        prog["u_view_proj"].write(np.ascontiguousarray(view_proj.transpose(0, 2, 1), dtype="f4").tobytes())
        idx = np.arange(spec.views)
        col, row = idx % self._cols, idx // self._cols  # row 0 is the top of the atlas
        offsets = np.stack([-1.0 + (2 * col + 1) / self._cols, 1.0 - (2 * row + 1) / self._rows], axis=1)
        prog["u_tile_offset"].write(offsets.astype("f4").tobytes())
        prog["u_tile_scale"].value = (1.0 / self._cols, 1.0 / self._rows)
        prog["u_eye"].write(eyes.astype("f4").tobytes())
        key = np.asarray(spec.key_light_dir, dtype=np.float64)
        prog["u_key_dir"].value = tuple(key / np.linalg.norm(key))
        prog["u_material"].value = tuple(spec.material_rgb)
        for name in ("ambient", "diffuse", "specular", "shininess"):
            prog[f"u_{name}"].value = float(getattr(spec, name))
        prog["u_key"].value = float(spec.key_light)
        prog["u_two_sided"].value = bool(spec.two_sided)

    def render(self, mesh: Mesh) -> np.ndarray:
        """Render an already normalised mesh: uint8 array (views, S, S, 3), row 0 on top."""
        if self._ctx is None:
            raise RuntimeError("Renderer is closed")
        spec, ctx, size = self.spec, self._ctx, self.spec.image_size
        if mesh.n_faces == 0:
            raise ValueError("cannot render a mesh without faces")
        if int(mesh.faces.min()) < 0 or int(mesh.faces.max()) >= len(mesh.vertices):
            raise ValueError("a face refers to a vertex that does not exist")  # GL would read out of bounds
        painted = mesh.materials is not None and self._paint_prog is not None
        # Make this renderer's context current for the draw (and the previous one again after):
        # a process may hold several renderers (tests, a grey and a materials one side by side).
        with ctx:
            raw = self._draw(mesh, painted)
        atlas = np.frombuffer(raw, dtype=np.uint8).reshape(self._rows * size, self._cols * size, 3)[::-1]
        tiles = atlas.reshape(self._rows, size, self._cols, size, 3).transpose(0, 2, 1, 3, 4)
        return np.ascontiguousarray(tiles.reshape(-1, size, size, 3)[: spec.views])

    def _draw(self, mesh: Mesh, painted: bool) -> bytes:
        """Upload, draw every view into the atlas and read it back (raw RGB bytes, bottom row first)."""
        spec, ctx = self.spec, self._ctx
        held: list = []  # GL objects of this mesh, released in reverse order
        try:
            vbo = ctx.buffer(np.ascontiguousarray(mesh.vertices, dtype="f4").tobytes())
            held.append(vbo)
            ibo = ctx.buffer(np.ascontiguousarray(mesh.faces, dtype="u4").tobytes())
            held.append(ibo)
            if painted:
                uvs = ctx.buffer(mesh.materials.uvs.tobytes())
                held.append(uvs)
                colors = ctx.buffer(mesh.materials.colors.tobytes())
                held.append(colors)
                content = [(vbo, "3f", "in_pos"), (uvs, "2f", "in_uv"), (colors, "4f1", "in_color")]
                vao = ctx.vertex_array(self._paint_prog, content, ibo, index_element_size=4)
            else:
                vao = ctx.vertex_array(self._prog, [(vbo, "3f", "in_pos")], ibo, index_element_size=4)
            held.append(vao)
            self._msaa.use()
            self._msaa.clear(*spec.background_rgb, 1.0, depth=1.0)
            if painted:
                self._draw_materials(vao, mesh.materials, held)
            else:
                vao.render(instances=spec.views)
            if self._resolved is not self._msaa:
                ctx.copy_framebuffer(self._resolved, self._msaa)
            raw = self._resolved.read(components=3, alignment=1)
        except self._moderngl_error as exc:
            raise RenderError(f"OpenGL failed while rendering: {exc}") from exc
        finally:
            for obj in reversed(held):
                obj.release()
        return raw

    def _draw_materials(self, vao, materials: Materials, held: list) -> None:
        """One instanced draw per material run: its base colour (or the spec's grey) and texture."""
        import moderngl

        prog, spec = self._paint_prog, self.spec
        textures: dict[int, object] = {}  # one GL texture per distinct image of this mesh
        first = 0
        for group in materials.groups:
            if group.faces:
                tex = None
                if group.texture is not None:
                    tex = textures.get(id(group.texture))
                    if tex is None:
                        img = np.ascontiguousarray(group.texture[::-1])  # GL's row 0 is the bottom (v = 0)
                        tex = self._ctx.texture((img.shape[1], img.shape[0]), 4, img.tobytes())
                        held.append(tex)
                        tex.build_mipmaps()
                        tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
                        tex.repeat_x = tex.repeat_y = True
                        textures[id(group.texture)] = tex
                    tex.use(0)
                    prog["u_tex"].value = 0
                prog["u_has_tex"].value = tex is not None
                prog["u_material"].value = tuple(group.color if group.color is not None else spec.material_rgb)
                vao.render(vertices=3 * group.faces, first=3 * first, instances=spec.views)
            first += group.faces

    @property
    def gl_renderer(self) -> str:
        """The driver's name (e.g. ``llvmpipe`` on CPU-only machines), for ``ftspl doctor``."""
        return "" if self._ctx is None else str(self._ctx.info["GL_RENDERER"])

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.release()
            self._ctx = None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def reference_mesh() -> Mesh:
    """A built-in, asymmetric test shape (icosphere on top of an offset box), un-normalised."""
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.6)
    sphere.apply_translation((0.0, 1.1, 0.0))
    box = trimesh.creation.box(extents=(1.6, 1.0, 0.8))
    box.apply_translation((0.3, 0.0, 0.0))
    verts = np.concatenate([sphere.vertices, box.vertices])
    faces = np.concatenate([sphere.faces, box.faces + len(sphere.vertices)])
    return Mesh(verts, faces)


def render_reference(spec: RenderSpec = RenderSpec()) -> np.ndarray:
    """Render :func:`reference_mesh` (used by ``ftspl doctor`` to check views are not blank)."""
    with Renderer(spec) as renderer:
        return renderer.render(normalize(reference_mesh(), "y", spec.normalize_radius))


def make_preview(views: np.ndarray, size: int = 128, tiles: list | None = None) -> bytes:
    """PNG bytes of a ``size x size`` thumbnail: a 2x2 grid of four views 90 degrees apart.

    Why a grid and not one view: gallery meshes often come with an unknown
    "front", so a single view may show the back or a thin side; views
    0, V/4, V/2, 3V/4 (0/90/180/270 degrees for 12 views) always show the
    shape's silhouette from two axes. With fewer than 4 views, view 0 is used.
    The four are downsampled by area (BOX), as the stored view strip's views
    are, so ``tiles`` (every view already at ``size // 2`` pixels: the strip's,
    :func:`~ftspl.engine.index.store.viewcodes.strip_tiles`) are pasted as they are.
    """
    from PIL import Image

    views = np.asarray(views)
    if views.ndim != 4 or views.shape[-1] != 3 or views.dtype != np.uint8 or len(views) == 0:
        raise ValueError(f"views must be uint8 (V, S, S, 3), got {views.dtype} {views.shape}")
    if size < 2:
        raise ValueError("preview size must be at least 2")
    n = len(views)
    if n < 4:
        image = Image.fromarray(views[0]).resize((size, size), Image.Resampling.BICUBIC)
    else:
        half = size // 2
        if tiles is not None and (len(tiles) != n or tiles[0].size != (half, half)):
            tiles = None  # another size than this preview's tiles
        image = Image.new("RGB", (size, size), (255, 255, 255))
        for k in range(4):
            i = (k * n) // 4
            tile = tiles[i] if tiles is not None else Image.fromarray(views[i]).resize((half, half), Image.Resampling.BOX)
            image.paste(tile, ((k % 2) * half, (k // 2) * half))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
