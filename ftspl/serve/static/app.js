// ftspl serve: the search page. Plain JavaScript, no build step, nothing from the network
// but this server. One request per photo, so one bad file never hides the other answers.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { token: sessionStorage.getItem("ftspl-token") || "", info: null, lastHit: null };
const BUSY_RETRIES = 3;
const MESH_FILE = /\.(obj|off|ply|stl|glb|gltf)$/i; // a 3D model: the shapes that look like it

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path, options = {}) {
  let res;
  try {
    res = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (err) {
    throw new ApiError(0, "Cannot reach the server (" + err.message + "). Is ftspl serve still running?");
  }
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    body = null;
  }
  if (res.status === 401) {
    showTokenForm();
    throw new ApiError(401, "This server needs an access token: enter it above.");
  }
  if (!res.ok) {
    const detail = body && body.error ? body.error : "HTTP " + res.status;
    throw new ApiError(res.status, explain(res.status, detail), Number(res.headers.get("Retry-After") || 1));
  }
  return body;
}

function explain(status, detail) {
  switch (status) {
    case 400: return "This file cannot be used: " + detail;
    case 413: return "Too large: " + detail;
    case 422: return "Bad request: " + detail;
    case 503: return "The server is busy: " + detail.replace(/^server busy: /, "");
    default: return detail;
  }
}

function showMessage(text) {
  const box = $("#message");
  box.textContent = text;
  box.hidden = !text;
}

function showTokenForm() {
  const form = $("#token-form");
  if (form.hidden) {
    form.hidden = false;
    $("#token").focus();
  }
}

// ---------------------------------------------------------------- library info
async function loadInfo() {
  try {
    const info = await api("api/info");
    state.info = info;
    const labels = info.labels.slice(0, 6).map((l) => `${l.label} ${l.count}`).join(", ");
    $("#library").textContent =
      `${info.shapes.toLocaleString()} shapes` + (labels ? ` (${labels}${info.labels.length > 6 ? ", …" : ""})` : "") +
      ` · model ${info.model.id} · generation ${info.generation}`;
    const warn = $("#warnings");
    warn.textContent = info.warnings.join(" ");
    warn.hidden = info.warnings.length === 0;
    $("#top").max = info.limits.max_top;
  } catch (err) {
    $("#library").textContent = err.message;
  }
}

// ---------------------------------------------------------------- queries
function topValue() {
  const n = Number($("#top").value);
  const max = state.info ? state.info.limits.max_top : 100;
  return Number.isInteger(n) && n >= 1 && n <= max ? n : 10;
}

// box: [x0, y0, x1, y1] in the photo's pixels (ask with that part only), or null for the whole photo
async function queryFile(file, box = null) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  const photo = node.querySelector(".query-photo");
  const isShape = MESH_FILE.test(file.name);
  if (isShape) photo.classList.add("broken"); // no picture of a mesh here: the server renders it
  else photo.src = URL.createObjectURL(file);
  photo.alt = (isShape ? "Your 3D model " : "Your photo ") + file.name + (box ? `, the part from ${box[0]},${box[1]} to ${box[2]},${box[3]}` : "");
  photo.addEventListener("error", () => photo.classList.add("broken"), { once: true });
  node.querySelector(".result-title").textContent = file.name + (box ? ` · box ${box.join(",")}` : "");
  const hint = node.querySelector(".box-hint");
  if (!isShape) enableBoxDrag(node.querySelector(".photo-frame"), photo, file);
  if (hint) {
    hint.hidden = isShape;
    photo.addEventListener("error", () => { hint.hidden = true; }, { once: true }); // nothing to point at
  }
  if (box) whenLoaded(photo, () => placeBox(node.querySelector(".photo-frame"), photo, box));
  const status = node.querySelector(".result-status");
  status.textContent = "Searching…";
  $("#results").prepend(node);

  const form = new FormData();
  form.append(isShape ? "shape" : "photo", file, file.name);
  form.append("top", String(topValue()));
  if ($("#rerank").value && !isShape) form.append("rerank", $("#rerank").value);
  if ($("#regions") && $("#regions").value && !isShape) form.append("regions", $("#regions").value);
  if (box) form.append("box", box.join(","));
  for (let attempt = 0; ; attempt++) {
    try {
      const answer = await api("api/query", { method: "POST", body: form });
      status.textContent = `${answer.hits.length} hits in ${Math.round(answer.took_ms)} ms · generation ${answer.generation}` +
        (box ? ` · searched the box ${box[0]},${box[1]} to ${box[2]},${box[3]}` : "") +
        (answer.rerank && answer.rerank !== "none" ? ` · re-ranked by ${answer.rerank}` : "") +
        (answer.views_note ? " · " + answer.views_note : "") +
        (answer.warnings.length ? " · " + answer.warnings.join(" ") : "");
      renderHits(node.querySelector(".hits"), answer.hits, isShape ? null : photo);
      return;
    } catch (err) {
      if (err.status === 503 && attempt < BUSY_RETRIES) {
        status.textContent = `${err.message} Trying again in ${err.retryAfter} s…`;
        await new Promise((r) => setTimeout(r, 1000 * Math.max(1, err.retryAfter)));
        continue;
      }
      status.textContent = "No answer.";
      const box = node.querySelector(".message");
      box.textContent = err.status === 503 ? `${err.message} (tried ${attempt + 1} times; pick the photo again later)` : err.message;
      box.hidden = false;
      return;
    }
  }
}

// ---------------------------------------------------------------- point at the object
// Drag a rectangle on a result's photo to ask again with that part only (the request's box, in the
// photo's own pixels). The box is drawn on the new result's photo in percentages, so it scales with it.
const MIN_BOX_PX = 6; // a smaller drag (on screen) is a click, not a box

function whenLoaded(img, fn) {
  if (img.complete && img.naturalWidth) fn(); else img.addEventListener("load", fn, { once: true });
}

function placeBox(frame, img, box, cls = "box") {
  let el = frame.querySelector("." + cls.split(" ").join("."));
  if (!el) {
    el = document.createElement("div");
    el.className = cls;
    el.setAttribute("aria-hidden", "true");
    frame.append(el);
  }
  const w = img.naturalWidth, h = img.naturalHeight;
  Object.assign(el.style, { left: `${(100 * box[0]) / w}%`, top: `${(100 * box[1]) / h}%`,
    width: `${(100 * (box[2] - box[0])) / w}%`, height: `${(100 * (box[3] - box[1])) / h}%` });
  return el;
}

function enableBoxDrag(frame, img, file) {
  frame.classList.add("croppable");
  let start = null;
  // the pointer in the photo's own pixels, kept inside the photo
  const at = (e) => {
    const r = img.getBoundingClientRect();
    const x = Math.min(Math.max(e.clientX - r.left, 0), r.width), y = Math.min(Math.max(e.clientY - r.top, 0), r.height);
    return { x: (x * img.naturalWidth) / r.width, y: (y * img.naturalHeight) / r.height, sx: x, sy: y };
  };
  const span = (a, b) => [Math.min(a.x, b.x), Math.min(a.y, b.y), Math.max(a.x, b.x), Math.max(a.y, b.y)];
  frame.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || !img.naturalWidth) return;
    e.preventDefault();
    frame.setPointerCapture(e.pointerId);
    start = at(e);
  });
  frame.addEventListener("pointermove", (e) => {
    if (start) placeBox(frame, img, span(start, at(e)), "box draft");
  });
  const finish = (e, ask) => {
    if (!start) return;
    const end = at(e), first = start;
    start = null;
    const draft = frame.querySelector(".box.draft");
    if (draft) draft.remove();
    if (!ask || Math.abs(end.sx - first.sx) < MIN_BOX_PX || Math.abs(end.sy - first.sy) < MIN_BOX_PX) return;
    const [x0, y0, x1, y1] = span(first, end);
    const box = [Math.floor(x0), Math.floor(y0), Math.min(Math.ceil(x1), img.naturalWidth),
      Math.min(Math.ceil(y1), img.naturalHeight)];
    queryFile(file, box);
  };
  frame.addEventListener("pointerup", (e) => finish(e, true));
  frame.addEventListener("pointercancel", (e) => finish(e, false));
}

function setImage(img, src) {
  if (!state.token) {
    img.src = src;
    return;
  }
  // an <img> cannot send the token: fetch the bytes with it and show them from a blob
  fetch(src, { headers: authHeaders() })
    .then((r) => (r.ok ? r.blob() : Promise.reject(new Error("HTTP " + r.status))))
    .then((blob) => { img.src = URL.createObjectURL(blob); })
    .catch(() => img.dispatchEvent(new Event("error")));
}

function basename(path) {
  return path.split(/[\\/]/).pop();
}

// the part of the photo a hit matched (regional search), cut from the photo itself
function regionThumb(photo, r) {
  const canvas = document.createElement("canvas");
  canvas.className = "region";
  const w = r.x1 - r.x0, h = r.y1 - r.y0, scale = 40 / Math.max(w, h);
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  canvas.setAttribute("aria-hidden", "true");
  const draw = () => canvas.getContext("2d").drawImage(photo, r.x0, r.y0, w, h, 0, 0, canvas.width, canvas.height);
  if (photo.complete && photo.naturalWidth) draw(); else photo.addEventListener("load", draw, { once: true });
  return canvas;
}

function renderHits(list, hits, photo = null) {
  list.replaceChildren();
  for (const hit of hits) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    const matched = hit.view == null ? "" : `, best matching view ${hit.view} (similarity ${hit.view_similarity.toFixed(3)})`;
    const r = hit.region;
    const where = r ? `, matched in your photo from ${r.x0},${r.y0} to ${r.x1},${r.y1}` : "";
    button.setAttribute("aria-label",
      `Rank ${hit.rank}: ${hit.label || "unlabelled"}, distance ${hit.distance.toFixed(3)}${matched}${where}, ${basename(hit.path)}. Open its views.`);
    const img = document.createElement("img");
    img.alt = "";
    img.loading = "lazy";
    img.width = 128;
    img.height = 128;
    img.addEventListener("error", () => {
      const none = document.createElement("span");
      none.className = "no-preview";
      none.textContent = "no preview";
      img.replaceWith(none);
    }, { once: true });
    setImage(img, hit.view_image || hit.preview); // the view closest to the photo, when the index stores views
    const parts = [
      ["rank", `#${hit.rank}`],
      ["label", hit.label || "unlabelled"],
      ["distance", `distance ${hit.distance.toFixed(3)}`],
      ...(hit.view == null ? [] : [["view", `view ${hit.view} · similarity ${hit.view_similarity.toFixed(3)}`]]),
      ["path", basename(hit.path)],
    ];
    button.append(img);
    if (r && photo) button.append(regionThumb(photo, r));
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      button.append(span);
    }
    button.title = hit.path;
    button.addEventListener("click", () => openDetail(hit, button));
    li.append(button);
    list.append(li);
  }
}

// ---------------------------------------------------------------- one hit's views
async function openDetail(hit, opener) {
  const dialog = $("#detail");
  state.lastHit = opener;
  $("#detail-title").textContent = `#${hit.rank} ${hit.label || "unlabelled"}`;
  const img = $("#detail-views");
  img.alt = `Four views of ${basename(hit.path)}, 90 degrees apart`;
  img.removeAttribute("src");
  setImage(img, hit.preview);
  const match = $("#detail-match");
  match.hidden = hit.view == null;
  if (hit.view != null) {
    const view = $("#detail-matched");
    view.alt = `View ${hit.view} of ${basename(hit.path)}, the one closest to your photo`;
    view.removeAttribute("src");
    setImage(view, hit.view_image);
    $("#detail-match-caption").textContent =
      `Closest view to your photo: view ${hit.view} (similarity ${hit.view_similarity.toFixed(3)})`;
  }
  const meta = $("#detail-meta");
  const rows = [["distance", hit.distance.toFixed(4)], ["path", hit.path], ["id", String(hit.id)]];
  if (hit.view != null) rows.push(["matched view", `${hit.view} (similarity ${hit.view_similarity.toFixed(4)})`]);
  fillMeta(meta, rows);
  if (typeof dialog.showModal === "function") dialog.showModal(); else dialog.setAttribute("open", "");
  $("#detail-close").focus();
  try {
    const shape = await api(`api/shapes/${hit.id}`);
    fillMeta(meta, [...rows, ["kind", shape.kind], ["faces", shape.faces == null ? "–" : String(shape.faces)],
      ["added", shape.added], ["content hash", shape.content_hash.slice(0, 16) + "…"]]);
  } catch (err) {
    fillMeta(meta, [...rows, ["details", err.message]]);
  }
}

function fillMeta(dl, rows) {
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
}

function closeDetail() {
  const dialog = $("#detail");
  if (dialog.open) dialog.close();
}

// ---------------------------------------------------------------- wiring
function handleFiles(files) {
  showMessage("");
  const list = Array.from(files || []);
  if (!list.length) return;
  for (const file of list) queryFile(file);
  $("#results").focus({ preventScroll: true });
}

function init() {
  const input = $("#photos");
  input.addEventListener("change", () => {
    handleFiles(input.files);
    input.value = "";
  });
  const drop = $("#drop");
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  document.addEventListener("drop", (e) => handleFiles(e.dataTransfer && e.dataTransfer.files));
  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail").addEventListener("close", () => { if (state.lastHit) state.lastHit.focus(); });
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("#token").value.trim();
    sessionStorage.setItem("ftspl-token", state.token);
    $("#token-form").hidden = true;
    loadInfo();
  });
  loadInfo();
  setInterval(loadInfo, 5000); // the library grows while index add runs: keep its size current
}

init();
