"""The handlers of ``ftspl serve``: the page, health, info, query, shape metadata and previews.

Shapes are addressed by their integer id only; no request parameter ever
becomes a file-system path. Every answer other than 200 is JSON
``{"error": message, "status": code}`` (raised as :class:`ApiError`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from functools import partial

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from ftspl.engine.errors import ImageLoadError, ImageTooLargeError, UsageError
from ftspl.engine.scoring.fusion import DEFAULT_FUSION, FUSIONS
from ftspl.engine.scoring.views import RERANKS, MatchConfig
from ftspl.results import Hit, QueryAnswer
from ftspl.serve.server import STATIC, ApiError, Server
from ftspl.serve.uploads import decode_upload, display_name

DEFAULT_TOP = 10
NO_PHOTO = ("no photo: send multipart field(s) 'photo' (or 'shape': a mesh file), or JSON {\"image\": BASE64} / "
            "{\"images\": [BASE64, ...]} (or {\"shape\": {\"name\": \"chair.glb\", \"data\": BASE64}})")


def _server(request: Request) -> Server:
    return request.app.state.server


# ------------------------------------------------------------------------ page, health, info
async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: Request) -> Response:
    st = _server(request).live.state()
    return JSONResponse({"status": "ok", "generation": st.generation, "shapes": st.count})


async def info(request: Request) -> Response:
    srv = _server(request)
    st, model, cfg = srv.live.state(), srv.live.model, srv.cfg
    return JSONResponse({
        "model": {"id": model.model_id, "backbone": model.backbone, "embed_dim": model.embed_dim},
        "render_spec": model.render_spec,
        "render_spec_hash": model.render_spec_hash,
        "shapes": st.count,
        "generation": st.generation,
        "labels": [{"label": k, "count": v} for k, v in st.labels.items()],
        "stale": bool(st.warnings),
        "warnings": st.warnings,
        "limits": {"max_photos": cfg.max_photos, "max_top": cfg.max_top, "default_top": DEFAULT_TOP,
                   "max_file_bytes": cfg.max_file_bytes, "max_pixels": cfg.max_pixels,
                   "max_body_bytes": cfg.max_body_bytes, "workers": cfg.workers, "queue": cfg.queue,
                   "max_faces": cfg.max_faces, "max_vertices": cfg.max_vertices, "file_timeout": cfg.file_timeout},
    })


# ------------------------------------------------------------------------ query
async def query(request: Request) -> Response:
    """``POST /api/query``: :meth:`ftspl.api.Library.query`'s answer (``QueryAnswer.to_dict``) with preview URLs."""
    srv = _server(request)
    t0 = time.perf_counter()
    async with srv.admission():
        top, fusion, uploads, match, box, shapes, fuse, regions = await _read_query(request, srv)
        answer = await anyio.to_thread.run_sync(partial(_run_query, srv, uploads, top, fusion, match, box, shapes,
                                                        fuse, regions), limiter=srv.limiter)
    st = srv.live.state()
    base = str(request.base_url)
    spec = srv.live.model.render_spec_hash or ""
    body = answer.to_dict()
    body["hits"] = [_hit(h, base, spec) for h in answer.hits]
    body["results"] = [{**r.to_dict(), "hits": [_hit(h, base, spec) for h in r.hits]} for r in answer.results]
    if answer.generation is None:
        body["generation"] = st.generation
    return JSONResponse({
        "model": answer.model_id,
        "took_ms": round((time.perf_counter() - t0) * 1000, 2),
        **body,
        "warnings": st.warnings,
    })


async def _read_query(request: Request, srv: Server) -> tuple[int, str, list[tuple[str, bytes]], MatchConfig, tuple | None,
                                                              list[tuple[str, bytes]], bool, tuple]:
    """``top``, ``fusion``, the uploaded photos ``(name, bytes)``, the re-ranking, the ``box``, the uploaded
    meshes ``(name, bytes)``, ``fuse`` and ``(regions, region_fusion)`` from a multipart or JSON body."""
    cfg = srv.cfg
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: list[tuple[str, bytes]] = []
    shapes: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        # starlette answers 400 itself for too many files or fields and for malformed bodies
        async with request.form(max_files=cfg.max_photos, max_fields=10, max_part_size=4096) as form:
            for i, part in enumerate(form.getlist("photo")):
                if not isinstance(part, UploadFile):
                    raise ApiError(400, "'photo' must be a file part (a form upload), not a text field")
                uploads.append((display_name(part.filename, i), await part.read()))
            for i, part in enumerate(form.getlist("shape")):
                if not isinstance(part, UploadFile):
                    raise ApiError(400, "'shape' must be a file part (a form upload of a mesh file), not a text field")
                shapes.append((display_name(part.filename, i), await part.read()))
            fuse_raw = form.get("fuse", request.query_params.get("fuse"))
            top_raw = form.get("top", request.query_params.get("top"))
            fusion = form.get("fusion", request.query_params.get("fusion"))
            rerank = form.get("rerank", request.query_params.get("rerank"))
            weight = form.get("rerank_weight", request.query_params.get("rerank_weight"))
            box_raw = form.get("box", request.query_params.get("box"))
            regions_raw = [form.get(k, request.query_params.get(k)) for k in ("regions", "region_fusion")]
    elif ctype == "application/json":
        try:
            doc = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "the JSON body must be an object: {\"image\": BASE64, \"top\": 10}")
        images = [doc["image"]] if "image" in doc else doc.get("images", [])
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise ApiError(400, "'image' must be a base64 string and 'images' a list of them")
        if len(images) > cfg.max_photos:
            raise ApiError(400, f"{len(images)} photos in one request; the limit is {cfg.max_photos}")
        for i, text in enumerate(images):
            uploads.append((f"image-{i + 1}", _b64(text, i)))
        shapes = _json_shapes(doc, cfg.max_photos - len(uploads))
        fuse_raw = doc.get("fuse", request.query_params.get("fuse"))
        top_raw = doc.get("top", request.query_params.get("top"))
        fusion = doc.get("fusion", request.query_params.get("fusion"))
        rerank = doc.get("rerank", request.query_params.get("rerank"))
        weight = doc.get("rerank_weight", request.query_params.get("rerank_weight"))
        box_raw = doc.get("box", request.query_params.get("box"))
        regions_raw = [doc.get(k, request.query_params.get(k)) for k in ("regions", "region_fusion")]
    else:
        raise ApiError(415, f"unsupported Content-Type {ctype or '(none)'!r}: use multipart/form-data or application/json")
    if not uploads and not shapes:
        raise ApiError(400, NO_PHOTO)
    if fusion in (None, ""):
        fusion = DEFAULT_FUSION
    if not isinstance(fusion, str) or fusion not in FUSIONS:
        raise ApiError(422, f"fusion must be one of {', '.join(FUSIONS)}, got {str(fusion)[:40]!r}")
    return (_parse_top(top_raw, cfg.max_top), fusion, uploads, _parse_match(rerank, weight), _parse_box(box_raw),
            shapes, _parse_flag("fuse", fuse_raw), _parse_regions(*regions_raw))


def _parse_regions(mode: object, fusion: object) -> tuple[str | None, str | None]:
    """``regions`` (none, crops, rmac) and ``region_fusion`` (max, mean, top3); None where not given (the defaults)."""
    from ftspl.engine.scoring.regions import REGION_FUSIONS, REGION_MODES

    out = []
    for name, raw, valid in (("regions", mode, REGION_MODES), ("region_fusion", fusion, REGION_FUSIONS)):
        if raw in (None, ""):
            out.append(None)
        elif isinstance(raw, str) and raw in valid:
            out.append(raw)
        else:
            raise ApiError(422, f"{name} must be one of {', '.join(valid)}, got {str(raw)[:40]!r}")
    return out[0], out[1]


def _json_shapes(doc: dict, room: int) -> list[tuple[str, bytes]]:
    """``"shape": {"name": "chair.glb", "data": BASE64}`` or ``"shapes": [...]`` of them, as ``(name, bytes)``."""
    items = [doc["shape"]] if "shape" in doc else doc.get("shapes", [])
    if not isinstance(items, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                              and isinstance(d.get("data"), str) for d in items):
        raise ApiError(400, "'shape' must be {\"name\": \"chair.glb\", \"data\": BASE64} and 'shapes' a list of them")
    if len(items) > room:
        raise ApiError(400, f"too many photos and shapes in one request; the limit is {room + len(items)} in all")
    out = []
    for i, d in enumerate(items):
        name = display_name(d["name"], i)
        try:
            out.append((name, base64.b64decode(d["data"], validate=True)))
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{name}: not valid base64") from None
    return out


def _parse_flag(name: str, raw: object) -> bool:
    if raw in (None, "", False, "0", "false"):
        return False
    if raw in (True, "1", "true"):
        return True
    raise ApiError(422, f"{name} must be true or false, got {str(raw)[:40]!r}")


def _parse_box(raw: object) -> tuple | None:
    """``box``: ``"X0,Y0,X1,Y1"`` or a JSON list of four numbers (pixels, or fractions 0 to 1); None: the whole photo."""
    from ftspl.photo_input import BOX_RULE, parse_box

    if raw in (None, ""):
        return None
    if isinstance(raw, str):
        try:
            return parse_box(raw)
        except UsageError as exc:
            raise ApiError(422, str(exc)) from None
    if isinstance(raw, list) and len(raw) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in raw):
        return tuple(raw)
    raise ApiError(422, f"{BOX_RULE}; got {str(raw)[:60]!r}")


def _parse_match(rerank: object, weight: object) -> MatchConfig:
    """The re-ranking asked for (``rerank``: none, view or blend; ``rerank_weight`` in [0, 1])."""
    if rerank in (None, ""):
        rerank = MatchConfig().rerank
    if not isinstance(rerank, str) or rerank not in RERANKS:
        raise ApiError(422, f"rerank must be one of {', '.join(RERANKS)}, got {str(rerank)[:40]!r}")
    if weight in (None, ""):
        return MatchConfig(rerank=rerank)
    try:
        w = float(weight) if isinstance(weight, (int, float, str)) and not isinstance(weight, bool) else float("nan")
    except ValueError:
        w = float("nan")
    if not 0.0 <= w <= 1.0:
        raise ApiError(422, f"rerank_weight must be a number from 0 to 1, got {str(weight)[:40]!r}")
    return MatchConfig(rerank=rerank, blend_weight=w)


def _b64(text: str, i: int) -> bytes:
    if text.startswith("data:") and "," in text:  # a data: URL as FileReader.readAsDataURL gives it
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image-{i + 1}: not valid base64") from None


def _parse_top(raw: object, max_top: int) -> int:
    if raw is None or raw == "":
        return DEFAULT_TOP
    if isinstance(raw, bool):
        raw = "bad"
    try:
        top = int(raw) if isinstance(raw, (int, str)) else int("bad")
    except ValueError:
        raise ApiError(422, f"top must be a whole number from 1 to {max_top}, got {str(raw)[:40]!r}") from None
    if not 1 <= top <= max_top:
        raise ApiError(422, f"top must be from 1 to {max_top}, got {top}")
    return top


def _run_query(srv: Server, uploads: list[tuple[str, bytes]], top: int, fusion: str, match: MatchConfig,
               box: tuple | None, shapes: list[tuple[str, bytes]] = (), fuse: bool = False,
               regions: tuple = (None, None)) -> QueryAnswer:
    """(Worker thread) decode every photo with the CLI's checks, then embed and search them as one batch."""
    cfg = srv.cfg
    images, names, bad, too_large = [], [], [], []
    for name, data in uploads:
        try:
            images.append(decode_upload(data, name, cfg.max_file_bytes, cfg.max_pixels))
            names.append(name)
        except ImageTooLargeError as exc:
            too_large.append(str(exc))
        except ImageLoadError as exc:
            bad.append(str(exc))
    if bad or too_large:
        raise ApiError(400 if bad else 413, "; ".join(bad + too_large))
    if shapes:
        from ftspl.serve.shape_uploads import query_with_shapes

        return query_with_shapes(srv, images, names, list(shapes), top, fusion, fuse, box)
    try:
        return srv.live.query(images, names, top, fusion, match, box=box, max_pixels=cfg.max_pixels, regions=regions)
    except UsageError as exc:  # a box outside a photo: the client's to fix
        raise ApiError(422, str(exc)) from None


def _etag(content_hash: str | None, spec_hash: str) -> str:
    return hashlib.sha256(f"{content_hash}:{spec_hash}".encode()).hexdigest()[:20]


def _hit(h: Hit, base: str, spec_hash: str) -> dict:
    """A hit's :meth:`~ftspl.results.Hit.to_dict` plus the URLs of its previews (cacheable: they carry its hash)."""
    tag = _etag(h.content_hash, spec_hash)
    return {**h.to_dict(), "preview": f"{base}api/shapes/{h.id}/preview.png?v={tag}",
            "view_image": None if h.view is None else f"{base}api/shapes/{h.id}/preview.png?view={h.view}&v={tag}"}


# ------------------------------------------------------------------------ shapes
async def shape(request: Request) -> Response:
    srv = _server(request)
    sid = request.path_params["shape_id"]
    row = await run_in_threadpool(srv.live.shape, sid)
    if row is None:
        raise ApiError(404, f"no shape with id {sid} (never indexed, or removed since)")
    spec = srv.live.model.render_spec_hash or ""
    return JSONResponse({
        "id": row.id, "path": row.path, "label": row.label, "kind": row.kind, "faces": row.faces,
        "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.added)), "content_hash": row.content_hash,
        "preview": f"{request.base_url}api/shapes/{row.id}/preview.png?v={_etag(row.content_hash, spec)}",
        "generation": srv.live.state().generation,
    })


async def preview(request: Request) -> Response:
    """The stored views (a 2x2 grid of four views), cacheable: the ETag follows the shape's content hash.

    ``?view=I`` (an integer) answers view I alone, cut from the strip of every
    view stored by models with per-view output (the matched view of a hit).
    """
    srv = _server(request)
    sid = request.path_params["shape_id"]
    spec = srv.live.model.render_spec_hash or ""
    cache = {"Cache-Control": "private, max-age=86400"}
    if "view" in request.query_params:
        return await _view_image(srv, sid, request.query_params["view"], cache)
    wanted = request.headers.get("if-none-match")
    row = await run_in_threadpool(srv.live.shape, sid, wanted is None)
    if row is None:
        raise ApiError(404, f"no shape with id {sid} (never indexed, or removed since)")
    etag = f'"{_etag(row.content_hash, spec)}"'
    if wanted is not None:
        tags = {t.strip().removeprefix("W/") for t in wanted.split(",")}
        if etag in tags or "*" in tags:
            return Response(status_code=304, headers={"ETag": etag, **cache})
        row = await run_in_threadpool(srv.live.shape, sid, True)
    if row is None or row.preview is None:
        raise ApiError(404, f"shape {sid} has no stored preview")
    return Response(row.preview, media_type="image/png", headers={"ETag": etag, **cache})


async def _view_image(srv: Server, sid: int, raw: str, cache: dict) -> Response:
    if not raw.isdigit() or len(raw) > 3:
        raise ApiError(422, f"view must be a view index (a whole number from 0), got {raw[:40]!r}")
    png, views = await run_in_threadpool(srv.live.view_png, sid, int(raw))
    if png is None:
        if await run_in_threadpool(srv.live.shape, sid) is None:
            raise ApiError(404, f"no shape with id {sid} (never indexed, or removed since)")
        if not views:
            raise ApiError(404, f"shape {sid} has no stored views (indexed by a model without per-view output)")
        raise ApiError(404, f"shape {sid} has {views} views (0 to {views - 1}); there is no view {raw}")
    return Response(png, media_type="image/png", headers=cache)
