"""The renderer's GLSL: one instanced program for the grey look, and the ``materials`` program built
from the same sources with per-vertex UVs and colours and a texture.

Both programs draw every view of a shape in one instanced call into its tile of the atlas
(``gl_ClipDistance`` keeps each instance in its tile) and light it the same way, so a shape
without materials looks the same under either; :mod:`ftspl.engine.rendering.renderer` holds
the GL context, buffers and draws that use them.
"""

from __future__ import annotations

_VERTEX_SHADER = """
#version 330
#define VIEWS {views}
uniform mat4 u_view_proj[VIEWS];
uniform vec2 u_tile_offset[VIEWS];
uniform vec2 u_tile_scale;
in vec3 in_pos;
out vec3 v_world;
flat out int v_view;{inputs}
void main() {{
    int i = gl_InstanceID;
    vec4 clip = u_view_proj[i] * vec4(in_pos, 1.0);
    // Clip to this camera's own frustum sides before moving it into its tile.
    gl_ClipDistance[0] = clip.w + clip.x;
    gl_ClipDistance[1] = clip.w - clip.x;
    gl_ClipDistance[2] = clip.w + clip.y;
    gl_ClipDistance[3] = clip.w - clip.y;
    gl_Position = vec4(clip.xy * u_tile_scale + u_tile_offset[i] * clip.w, clip.zw);
    v_world = in_pos;
    v_view = i;{passes}
}}
"""

#: What the ``materials`` program adds to the vertex shader: UVs and colours per vertex.
_MATERIAL_VERTEX_INPUTS = """
in vec2 in_uv;
in vec4 in_color;
out vec2 v_uv;
out vec4 v_color;"""
_MATERIAL_VERTEX_PASSES = """
    v_uv = in_uv;
    v_color = in_color;"""

_FRAGMENT_SHADER = """
#version 330
#define VIEWS {views}
uniform vec3 u_eye[VIEWS];
uniform vec3 u_material;
uniform vec3 u_key_dir;
uniform float u_ambient;
uniform float u_diffuse;
uniform float u_specular;
uniform float u_shininess;
uniform float u_key;
uniform bool u_two_sided;
in vec3 v_world;
flat in int v_view;{inputs}
out vec4 f_color;
void main() {{
    vec3 to_eye = normalize(u_eye[v_view] - v_world);
    vec3 n = cross(dFdx(v_world), dFdy(v_world));
    float len = length(n);
    n = len > 0.0 ? n / len : to_eye;
    if (dot(n, to_eye) < 0.0) n = -n;           // face the camera ...
    if (!u_two_sided && !gl_FrontFacing) n = -n;  // ... unless one-sided
    vec3 base = u_material;{paint}
    float headlight = max(dot(n, to_eye), 0.0);
    vec3 r = reflect(-to_eye, n);
    float spec = headlight > 0.0 ? pow(max(dot(r, to_eye), 0.0), u_shininess) : 0.0;
    float key = max(dot(n, u_key_dir), 0.0);
    vec3 c = base * (u_ambient + u_diffuse * headlight + u_key * key) + vec3(u_specular * spec);
    f_color = vec4(clamp(c, 0.0, 1.0), 1.0);
}}
"""

#: What the ``materials`` program adds to the fragment shader. ``u_material`` is the
#: material run's base colour there; the texture is sampled before any branch that
#: depends on it (implicit derivatives need uniform control flow).
_MATERIAL_FRAGMENT_INPUTS = """
uniform bool u_has_tex;
uniform sampler2D u_tex;
in vec2 v_uv;
in vec4 v_color;"""
_MATERIAL_FRAGMENT_PAINT = """
    vec4 t = texture(u_tex, v_uv);
    if (u_has_tex) {
        if (t.a < 0.5) discard;  // cut-out leaves, fences, lace
        // map_Kd is modulated by Kd, except where an exporter left Kd black or near black
        base = max(u_material.r, max(u_material.g, u_material.b)) > 0.15 ? t.rgb * u_material : t.rgb;
    }
    base *= v_color.rgb;"""


def program_sources(views: int, materials: bool) -> tuple[str, str]:
    """(vertex, fragment) shader sources of the grey program, or of the ``materials`` one."""
    vertex = _VERTEX_SHADER.format(
        views=views, inputs=_MATERIAL_VERTEX_INPUTS if materials else "",
        passes=_MATERIAL_VERTEX_PASSES if materials else "",
    )
    fragment = _FRAGMENT_SHADER.format(
        views=views, inputs=_MATERIAL_FRAGMENT_INPUTS if materials else "",
        paint=_MATERIAL_FRAGMENT_PAINT if materials else "",
    )
    return vertex, fragment


__all__ = ["program_sources"]
