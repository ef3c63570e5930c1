// The studio page's logic: a 512x384 canvas of class ids painted with brush and flood fill, references
// from the training folder or an upload, and Generate, which queues a job on tools/studio/server.py and polls it.
// The canvas holds class ids (state.ids); the colours on screen are drawn from them, never read back.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, ids: null, rgb: null, cls: 1, tool: "brush", size: 24, undo: [],
  source: { kind: "painted" },   // painted | test (name) | file (stem): what Generate sends as the label
  ref: null, refPage: 0, job: null, drawing: false, last: null,
};
const UNDO_DEPTH = 40;
const SIZES = [4, 12, 24, 48, 96];
// The server takes POSTs only with a content type that a page of another site cannot send without asking
// (docs/STUDIO.md, "What the server defends against"); a file's own type may be empty or a form's.
const UPLOAD = { "Content-Type": "application/octet-stream" };

async function api(path, options = {}) {
  const resp = await fetch(path, options);
  const body = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

function notice(text, kind = "error") {
  const el = $("notice");
  el.textContent = text;
  el.className = `notice ${kind}`;
  el.hidden = !text;
}

// ---- the canvas -----------------------------------------------------------------------------------
let ctx, image;

function setupCanvas() {
  const { width, height } = state.info;
  const canvas = $("canvas");
  ctx = canvas.getContext("2d");
  image = ctx.createImageData(width, height);
  state.ids = new Uint8Array(width * height).fill(1);  // blank: all sky
  redraw();
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    const p = canvasPoint(e);
    pushUndo();
    if (state.tool === "fill") { floodFill(p.x, p.y, state.cls); return; }
    state.drawing = true;
    state.last = p;
    stamp(p.x, p.y);
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = canvasPoint(e);
    const id = state.ids[p.y * width + p.x];
    $("hover").textContent = id === undefined ? "" : `· ${state.info.classes[id].name} at ${p.x}, ${p.y}`;
    if (!state.drawing) return;
    strokeTo(p);
  });
  const stop = () => { state.drawing = false; state.last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  canvas.addEventListener("pointerleave", () => { $("hover").textContent = ""; });
}

function canvasPoint(e) {
  const r = $("canvas").getBoundingClientRect();
  const { width, height } = state.info;
  return {
    x: Math.min(width - 1, Math.max(0, Math.floor((e.clientX - r.left) * width / r.width))),
    y: Math.min(height - 1, Math.max(0, Math.floor((e.clientY - r.top) * height / r.height))),
  };
}

function redraw(x0 = 0, y0 = 0, x1 = state.info.width, y1 = state.info.height) {
  const { width } = state.info;
  const px = image.data;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * width + x, c = state.ids[i] * 3;
      px[4 * i] = state.rgb[c]; px[4 * i + 1] = state.rgb[c + 1]; px[4 * i + 2] = state.rgb[c + 2]; px[4 * i + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0, x0, y0, x1 - x0, y1 - y0);
}

function edited() {
  // A loaded label changed by hand is no longer that file: its noise is seeded as a painting's.
  if (state.source.kind !== "painted") {
    state.source = { kind: "painted" };
    $("label-source").textContent = "painted by hand";
    $("test-labels").value = "";
  }
}

function stamp(cx, cy) {
  const { width, height } = state.info;
  const r = state.size / 2, r2 = r * r;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(width, Math.ceil(cx + r + 1));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(height, Math.ceil(cy + r + 1));
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= r2) state.ids[y * width + x] = state.cls;
    }
  }
  edited();
  redraw(x0, y0, x1, y1);
}

function strokeTo(p) {
  // Stamps every quarter brush along the segment, so a fast stroke leaves no gaps.
  const { x, y } = state.last, dist = Math.hypot(p.x - x, p.y - y);
  const n = Math.max(1, Math.ceil(dist / Math.max(1, state.size / 4)));
  for (let k = 1; k <= n; k++) stamp(Math.round(x + (p.x - x) * k / n), Math.round(y + (p.y - y) * k / n));
  state.last = p;
}

function floodFill(sx, sy, cls) {
  // Scanline fill of the 4-connected region of the clicked class.
  const { width, height } = state.info, ids = state.ids, from = ids[sy * width + sx];
  if (from === cls) return;
  const stack = [[sx, sy]];
  while (stack.length) {
    const [x, y] = stack.pop();
    let l = x, r = x;
    while (l > 0 && ids[y * width + l - 1] === from) l--;
    while (r < width - 1 && ids[y * width + r + 1] === from) r++;
    for (let i = l; i <= r; i++) ids[y * width + i] = cls;
    for (const ny of [y - 1, y + 1]) {
      if (ny < 0 || ny >= height) continue;
      for (let i = l; i <= r; i++) {
        if (ids[ny * width + i] === from && (i === l || ids[ny * width + i - 1] !== from)) stack.push([i, ny]);
      }
    }
  }
  edited();
  redraw();
}

function pushUndo() {
  state.undo.push({ ids: state.ids.slice(), source: state.source });
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
}

function undo() {
  const last = state.undo.pop();
  if (!last) return;
  state.ids = last.ids;
  setSource(last.source);
  redraw();
}

function setSource(source, text) {
  state.source = source;
  $("label-source").textContent = text || (source.kind === "test" ? `test label ${source.name}`
    : source.kind === "file" ? `file ${source.stem}.png` : "painted by hand");
  $("test-labels").value = source.kind === "test" ? source.name : "";
}

function setIds(payload, source) {
  pushUndo();
  const bytes = atob(payload.ids);
  for (let i = 0; i < bytes.length; i++) state.ids[i] = bytes.charCodeAt(i);
  setSource(source, payload.note ? `${source.kind === "test" ? source.name : source.stem + ".png"} · ${payload.note}` : "");
  redraw();
  notice(payload.note ? `Note: ${payload.note}.` : "", "info");
}

function idsBase64() {
  let s = "";
  for (let i = 0; i < state.ids.length; i += 0x8000) s += String.fromCharCode.apply(null, state.ids.subarray(i, i + 0x8000));
  return btoa(s);
}

function saveLabel() {
  // The contest's format as grey levels: each pixel's value is its class id.
  const { width, height } = state.info;
  const c = document.createElement("canvas");
  c.width = width; c.height = height;
  const g = c.getContext("2d"), im = g.createImageData(width, height);
  state.ids.forEach((v, i) => { im.data.set([v, v, v, 255], 4 * i); });
  g.putImageData(im, 0, 0);
  const a = document.createElement("a");
  a.href = c.toDataURL("image/png");
  a.download = `${state.source.kind === "test" ? state.source.name.replace(/\.png$/, "") : "painted"}_label.png`;
  a.click();
}

// ---- the side panel -------------------------------------------------------------------------------
function buildPalette() {
  const pal = $("palette");
  state.rgb = new Uint8Array(state.info.classes.length * 3);
  for (const c of state.info.classes) {
    state.rgb.set([1, 3, 5].map((k) => parseInt(c.color.slice(k, k + 2), 16)), 3 * c.id);
    const b = document.createElement("button");
    b.className = "swatch";
    b.dataset.class = c.name;
    b.title = `${c.id} ${c.name}`;
    b.innerHTML = `<span class="chip" style="background:${c.color}"></span><span>${c.name}</span>`;
    b.addEventListener("click", () => selectClass(c.id));
    pal.appendChild(b);
  }
  selectClass(1);
}

function selectClass(id) {
  state.cls = id;
  document.querySelectorAll(".swatch").forEach((b) => b.classList.toggle("active", b.dataset.class === state.info.classes[id].name));
}

function selectTool(tool) {
  state.tool = tool;
  $("tool-brush").classList.toggle("active", tool === "brush");
  $("tool-fill").classList.toggle("active", tool === "fill");
  $("canvas").classList.toggle("fill", tool === "fill");
}

function setSize(v) {
  state.size = Number(v);
  $("size").value = v;
  $("size-out").textContent = v;
  document.querySelectorAll(".sizes button").forEach((b) => b.classList.toggle("active", Number(b.dataset.size) === state.size));
}

function checkFile(file) {
  const limit = state.info.limits.upload_bytes;
  if (file.size > limit) {
    notice(`${file.name} is ${file.size.toLocaleString()} bytes; the limit is ${limit.toLocaleString()}.`);
    return false;
  }
  return true;
}

async function loadTestLabel(name) {
  if (!name) return;
  try {
    const payload = await api(`/api/test_label?name=${encodeURIComponent(name)}`);
    setIds(payload, { kind: "test", name });
    if (payload.reference) await chooseReference(payload.reference, true);
  } catch (e) { notice(e.message); }
}

async function uploadLabel(file) {
  if (!file || !checkFile(file)) return;
  try {
    const payload = await api(`/api/label?filename=${encodeURIComponent(file.name)}`, { method: "POST", headers: UPLOAD, body: file });
    setIds(payload, { kind: "file", stem: payload.stem });
  } catch (e) { notice(e.message); }
}

// ---- references -----------------------------------------------------------------------------------
const PER_PAGE = 12;

async function showReferences(page, find = "") {
  try {
    const r = await api(`/api/references?page=${page}&per=${PER_PAGE}${find ? `&find=${encodeURIComponent(find)}` : ""}`);
    state.refPage = r.page;
    $("refs-page").textContent = r.total ? `${r.page + 1} / ${r.pages} · ${r.total} images` : r.note;
    const box = $("thumbs");
    box.replaceChildren(...r.items.map((name) => {
      const img = document.createElement("img");
      img.className = "thumb";
      img.dataset.name = name;
      img.title = name;
      img.loading = "lazy";
      img.src = `/api/thumb?name=${encodeURIComponent(name)}`;
      img.addEventListener("click", () => chooseReference(name));
      return img;
    }));
    markChosen();
  } catch (e) { notice(e.message); }
}

function markChosen() {
  document.querySelectorAll(".thumb").forEach((t) => t.classList.toggle("active", t.dataset.name === state.ref));
}

async function chooseReference(name, turnPage = false) {
  state.ref = name;
  const img = $("ref-chosen");
  img.src = `/api/reference?name=${encodeURIComponent(name)}`;
  img.hidden = false;
  $("ref-name").textContent = name.startsWith("upload-") ? `uploaded image (${name})` : name;
  if (turnPage && !name.startsWith("upload-")) await showReferences(state.refPage, name);
  markChosen();
}

async function uploadReference(file) {
  if (!file || !checkFile(file)) return;
  try {
    const r = await api("/api/reference", { method: "POST", headers: UPLOAD, body: file });
    await chooseReference(r.name);
    notice(r.note ? `Note: ${r.note}.` : "", "info");
  } catch (e) { notice(e.message); }
}

// ---- settings and Generate ------------------------------------------------------------------------
const SLIDERS = ["strength", "guidance", "color_transfer"];

function buildSettings() {
  const d = state.info.defaults;
  $("seed").value = d.seed;
  $("steps").value = d.steps;
  for (const k of SLIDERS) {
    $(k).value = d[k];
    const show = () => { $(`${k}-out`).textContent = Number($(k).value).toFixed(2); };
    $(k).addEventListener("input", show);
    show();
  }
  $("color_per_class").checked = d.color_per_class;
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 100000); });
}

function settings() {
  const out = { seed: Number($("seed").value), steps: Number($("steps").value), color_per_class: $("color_per_class").checked };
  for (const k of SLIDERS) out[k] = Number($(k).value);
  return out;
}

function labelRequest() {
  if (state.source.kind === "test") return { test: state.source.name };
  const label = { ids: idsBase64() };
  if (state.source.kind === "file") label.stem = state.source.stem;
  return label;
}

async function generate() {
  if (!state.ref) { notice("Pick a reference image first (below), or upload one."); return; }
  notice("");
  $("generate").disabled = true;
  showProgress(0, "sending…");
  try {
    const job = await api("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ label: labelRequest(), reference: state.ref, settings: settings() }),
    });
    state.job = job.job;
    await poll(job.job);
  } catch (e) {
    notice(e.message);
    $("progress").hidden = true;
  } finally {
    $("generate").disabled = false;
  }
}

function showProgress(fraction, text) {
  $("progress").hidden = false;
  $("placeholder").textContent = $("result").hidden ? "Generating…" : "";
  $("progress-bar").style.width = `${Math.round(100 * fraction)}%`;
  $("status").textContent = text;
}

async function poll(id) {
  for (;;) {
    const st = await api(`/api/job?id=${id}`);
    if (st.state === "queued") showProgress(0, st.ahead ? `waiting: ${st.ahead} request${st.ahead > 1 ? "s" : ""} ahead` : "starting…");
    else if (st.state === "running") showProgress(st.progress, `${st.phase} · ${st.calls} / ${st.expected} network calls · ${st.seconds.toFixed(1)} s`);
    else if (st.state === "error") throw new Error(`generation failed: ${st.error}`);
    else { await showResult(st); return; }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function showResult(st) {
  const img = $("result"), url = (name) => `/api/job_file?id=${st.job}&name=${name}`;
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = () => reject(new Error("the result did not load")); img.src = url("result.jpg"); });
  img.hidden = false;
  $("placeholder").hidden = true;
  $("progress").hidden = true;
  const r = st.result;
  $("score-style").textContent = r.style.toFixed(4);
  $("score-mask").textContent = r.mask_accuracy === null ? "no judge checkpoint" : r.mask_accuracy.toFixed(4);
  $("score-time").textContent = `${st.seconds.toFixed(1)} s, ${r.unet_calls} UNet calls per image` + (st.waited_s > 0.5 ? `, waited ${st.waited_s.toFixed(1)} s` : "");
  $("result-meta").textContent = `· ${st.stem} · seed ${settings().seed}`;
  const links = [["result.jpg", url("result.jpg"), `${st.stem}.jpg`], ["label (ids)", url("label.png"), `${st.stem}_label.png`],
    ["label (colours)", url("label_colour.png"), `${st.stem}_label_colour.png`],
    ["reference", `/api/reference?name=${encodeURIComponent(st.reference)}`, st.reference]];
  $("downloads").replaceChildren(...links.map(([text, href, file]) => {
    const a = document.createElement("a");
    Object.assign(a, { href, download: file, textContent: text, className: "button" });
    return a;
  }));
  $("downloads").classList.remove("muted");
  document.body.dataset.result = st.job;
}

// ---- start ----------------------------------------------------------------------------------------
async function start() {
  try {
    state.info = await api("/api/info");
  } catch (e) { notice(`The server did not answer: ${e.message}`); return; }
  const info = state.info;
  $("run").textContent = info.run + (info.judge ? ` · judge ${info.judge.path}` : " · no judge");
  const L = info.limits;
  $("limits").textContent = `Uploads up to ${(L.upload_bytes / 2 ** 20).toFixed(0)} MiB and ${(L.upload_pixels / 1e6).toFixed(0)} megapixels; ` +
    `labels are ids 0..${info.classes.length - 1}, other sizes are resized to ${info.width}x${info.height} as test.py does; ` +
    `at most ${L.waiting} requests wait behind the running one.`;
  buildPalette();
  setupCanvas();
  buildSettings();
  for (const s of SIZES) {
    const b = document.createElement("button");
    b.dataset.size = s;
    b.textContent = s;
    b.addEventListener("click", () => setSize(s));
    $("sizes").appendChild(b);
  }
  setSize(24);
  $("size").addEventListener("input", (e) => setSize(e.target.value));
  $("tool-brush").addEventListener("click", () => selectTool("brush"));
  $("tool-fill").addEventListener("click", () => selectTool("fill"));
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", () => { pushUndo(); state.ids.fill(state.cls); edited(); redraw(); });
  $("save-label").addEventListener("click", saveLabel);
  $("generate").addEventListener("click", generate);
  $("label-file").addEventListener("change", (e) => { uploadLabel(e.target.files[0]); e.target.value = ""; });
  $("ref-file").addEventListener("change", (e) => { uploadReference(e.target.files[0]); e.target.value = ""; });
  $("test-labels").addEventListener("change", (e) => loadTestLabel(e.target.value));
  $("refs-prev").addEventListener("click", () => showReferences(Math.max(0, state.refPage - 1)));
  $("refs-next").addEventListener("click", () => showReferences(state.refPage + 1));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
    else if (e.key === "b") selectTool("brush");
    else if (e.key === "f") selectTool("fill");
  });
  const tests = await api("/api/test_labels").catch((e) => ({ items: [], note: e.message }));
  for (const it of tests.items) $("test-labels").add(new Option(it.name, it.name));
  if (!tests.items.length) $("test-labels").options[0].textContent = "no test folder";
  $("test-labels").title = tests.note || `${tests.items.length} test labels`;
  await showReferences(0);
  document.body.dataset.ready = "1";  // the browser test waits for this
  if (info.warm_up) watchWarmUp(info.warm_up);
}

async function watchWarmUp(id) {
  // The server's first generation (a blank canvas) loads Jittor's kernels; say why a Generate now waits.
  const ph = $("placeholder"), text = ph.textContent;
  for (;;) {
    const st = await api(`/api/job?id=${id}`).catch(() => ({ state: "error" }));
    if (st.state === "done" || st.state === "error") break;
    if ($("progress").hidden) ph.textContent = "Warming up: the first generation after start loads the model's kernels…";
    await new Promise((r) => setTimeout(r, 1000));
  }
  if ($("progress").hidden) ph.textContent = text;
}

start();
