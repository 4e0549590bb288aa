// raddino view: the page. All numbers come from the server (raddino.viz); this file only asks
// for them, draws them and keeps the query in the URL (the permalink).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { a: 0, b: null, image: null, x: null, y: null, page: 0, count: 16,
                filters: {}, pca: false, opacity: 0.6, by: "cls" };
const results = {};     // encoder -> similarity answer, with its maps decoded
const neighbours = {};  // encoder -> nearest-studies answer
let session = null;
window.raddinoView = { state, results, neighbours };

async function api(path) {
  const response = await fetch(path);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(message) {
  const line = document.createElement("div");
  line.textContent = message;
  $("errors").appendChild(line);
  document.body.dataset.state = "error";
}

function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

// ---------------------------------------------------------------- the URL holds the state

function readUrl() {
  const p = new URLSearchParams(location.search);
  const num = (key) => (p.has(key) && p.get(key) !== "" ? Number(p.get(key)) : null);
  state.a = num("a") ?? 0;
  state.b = num("b");
  state.image = num("image");
  state.x = num("x");
  state.y = num("y");
  state.page = num("page") ?? 0;
  state.count = num("count") ?? 16;
  state.pca = p.get("pca") === "1";
  state.opacity = num("opacity") ?? 0.6;
  state.by = p.get("by") || "cls";
  state.filters = {};
  for (const [key, value] of p) if (key.startsWith("f.")) state.filters[key.slice(2)] = value;
}

function filterQuery() {
  return Object.entries(state.filters).map(([k, v]) => `&f.${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join("");
}

function writeUrl() {
  const p = new URLSearchParams();
  for (const key of ["a", "b", "image", "x", "y", "page", "count", "opacity", "by"]) {
    if (state[key] !== null && state[key] !== undefined) p.set(key, state[key]);
  }
  if (state.pca) p.set("pca", "1");
  for (const [k, v] of Object.entries(state.filters)) p.set(`f.${k}`, v);
  history.replaceState(null, "", `?${p}`);
}

// ---------------------------------------------------------------- gallery

function encoders() { return state.b === null ? [state.a] : [state.a, state.b]; }
function grid(encoder) { return session.encoders[encoder].grid || [1, 1]; }
function viewUrl(encoder, image, thumb) { return `/api/view/${encoder}/${image}.png${thumb ? "?thumb=1" : ""}`; }

async function loadGallery() {
  const page = await api(`/api/images?page=${state.page}${filterQuery()}`);
  state.page = page.page;
  $("gallery-count").textContent = `(${page.total})`;
  $("page-label").textContent = `page ${page.page + 1} of ${page.pages}`;
  $("thumbs").replaceChildren(...page.items.map((item) => {
    const node = el("div", { className: "thumb", title: `${item.name}\n${item.labels}` },
      [el("img", { src: viewUrl(state.a, item.image, true), loading: "lazy", alt: item.name }),
       el("span", { textContent: item.labels || item.name })]);
    node.dataset.image = item.image;
    node.classList.toggle("selected", item.image === state.image);
    node.onclick = () => selectImage(item.image);
    return node;
  }));
  writeUrl();
}

async function selectImage(image, keepPoint = false) {
  state.image = image;
  if (!keepPoint) { state.x = null; state.y = null; }
  $("errors").replaceChildren();
  for (const node of document.querySelectorAll(".thumb")) node.classList.toggle("selected", Number(node.dataset.image) === image);
  $("query-image").src = viewUrl(state.a, image, false);
  $("query-name").textContent = "";
  showPca();
  drawMarker();
  writeUrl();
  await Promise.all([loadNeighbours(), state.x === null ? clearResults() : runQuery()]);
}

// ---------------------------------------------------------------- the click

function drawMarker(node = $("marker"), x = state.x, y = state.y) {
  node.hidden = x === null;
  if (node.hidden) return;
  const [h, w] = grid(state.a);
  const col = Math.floor(x * w), row = Math.floor(y * h);
  Object.assign(node.style, { left: `${(col / w) * 100}%`, top: `${(row / h) * 100}%`,
                              width: `${100 / w}%`, height: `${100 / h}%` });
}

function pointOf(event) {
  const box = $("query-image").getBoundingClientRect();
  const fx = (event.clientX - box.left) / box.width, fy = (event.clientY - box.top) / box.height;
  const [h, w] = grid(state.a);
  const col = Math.min(w - 1, Math.max(0, Math.floor(fx * w)));
  const row = Math.min(h - 1, Math.max(0, Math.floor(fy * h)));
  return [(col + 0.5) / w, (row + 0.5) / h];  // the patch centre: a stable permalink
}

function clearResults() {
  for (const key of Object.keys(results)) delete results[key];
  $("results").replaceChildren();
  $("save-figure").disabled = true;
  $("query-info").textContent = "click a patch of the query";
  document.body.dataset.state = "idle";
}

function decode(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

function patchOf(encoder) {
  const [h, w] = grid(encoder);
  return [Math.min(h - 1, Math.floor(state.y * h)), Math.min(w - 1, Math.floor(state.x * w))];
}

function clickQuery(encoder) {
  const [row, col] = patchOf(encoder);
  return `encoder=${encoder}&image=${state.image}&row=${row}&col=${col}&count=${state.count}${filterQuery()}`;
}

async function runQuery() {
  document.body.dataset.state = "loading";
  for (const key of Object.keys(results)) delete results[key];
  const started = performance.now();
  const panels = await Promise.all(encoders().map(async (encoder) => {
    const panel = el("div", { className: "panel" });
    panel.dataset.encoder = encoder;
    try {
      const answer = await api(`/api/similarity?${clickQuery(encoder)}`);
      answer.values = decode(answer.maps);
      answer.queryValues = decode(answer.query_map);
      results[encoder] = answer;
      renderPanel(panel, answer);
      panel.dataset.state = "ready";
    } catch (error) {
      panel.append(el("h2", { textContent: session.encoders[encoder].name }),
                   el("p", { className: "panel-error", textContent: error.message }));
      panel.dataset.state = "error";
      showError(`${session.encoders[encoder].name}: ${error.message}`);
    }
    return panel;
  }));
  $("results").replaceChildren(...panels);
  const [row, col] = patchOf(state.a);
  window.raddinoView.clickMs = performance.now() - started;  // asked, answered, decoded, drawn
  $("query-info").textContent = `patch row ${row}, col ${col}: heatmaps in ${Math.round(window.raddinoView.clickMs)} ms`;
  $("save-figure").disabled = !results[state.a];
  if (document.body.dataset.state !== "error") document.body.dataset.state = "ready";
}

function drawHeatmap(canvas, values, offset, h, w, low, high) {
  const lut = session.colormap, span = high - low > 1e-6 ? high - low : 1e-6;
  const image = new ImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const t = Math.min(1, Math.max(0, (values[offset + i] - low) / span));
    const [r, g, b] = lut[Math.min(255, Math.floor(t * 256))];
    image.data.set([r, g, b, 255], 4 * i);
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function scaleBar(low, high) {
  const canvas = el("canvas", { className: "scale", width: 256, height: 1 });
  drawHeatmap(canvas, Float32Array.from({ length: 256 }, (_, i) => low + ((high - low) * i) / 255), 0, 1, 256, low, high);
  return canvas;
}

function renderPanel(panel, answer) {
  const [h, w] = answer.grid;
  const missing = answer.missing.length ? ` (${answer.missing.length} targets not in this store)` : "";
  panel.append(el("h2", {}, [`${answer.name}: `, answer.low.toFixed(2), scaleBar(answer.low, answer.high),
                             answer.high.toFixed(2), ` cosine similarity${missing}`]));
  const cards = answer.targets.map((target, index) => {
    const canvas = el("canvas", { width: w, height: h });
    canvas.style.opacity = session.heatmap_alpha;
    drawHeatmap(canvas, answer.values, index * h * w, h, w, answer.low, answer.high);
    const best = el("span", { className: "best", textContent: "+" });
    Object.assign(best.style, { left: `${((target.best[1] + 0.5) / w) * 100}%`, top: `${((target.best[0] + 0.5) / h) * 100}%` });
    const card = el("div", { className: "target", title: target.labels }, [
      el("div", { className: "frame" }, [el("img", { src: viewUrl(state.a, target.image, true), alt: target.name }), canvas, best]),
      el("span", { textContent: `${target.name} · max ${target.max.toFixed(2)}` })]);
    card.dataset.image = target.image;
    card.dataset.max = target.max;
    card.onclick = () => selectImage(target.image);
    return card;
  });
  panel.append(el("div", { className: "targets" }, cards));
}

// ---------------------------------------------------------------- nearest studies, PCA

async function loadNeighbours() {
  const lists = await Promise.all(encoders().map(async (encoder) => {
    const list = el("ol");
    list.dataset.encoder = encoder;
    const column = el("div", { className: "column" }, [el("h3", { textContent: session.encoders[encoder].name }), list]);
    try {
      const answer = await api(`/api/neighbours?encoder=${encoder}&image=${state.image}&by=${state.by}`);
      neighbours[encoder] = answer;
      $("query-name").textContent = `${answer.query.name} ${answer.query.labels}`;
      for (const item of answer.items) {
        const li = el("li", { title: item.labels }, [el("img", { src: viewUrl(state.a, item.image, true), alt: "" }),
          el("span", {}, [`${item.name} (${item.similarity.toFixed(3)})`, el("br"), el("small", { textContent: item.labels })])]);
        li.dataset.image = item.image;
        li.dataset.similarity = item.similarity;
        li.onclick = () => selectImage(item.image);
        list.append(li);
      }
    } catch (error) {
      list.append(el("li", { className: "panel-error", textContent: error.message }));
    }
    return column;
  }));
  $("neighbour-lists").replaceChildren(...lists);
}

function showPca() {
  const overlay = $("pca-overlay");
  overlay.hidden = !state.pca || state.image === null;
  overlay.style.opacity = state.opacity;
  if (overlay.hidden) return;
  const problem = session.encoders[state.a].problem;
  if (problem) { showError(problem); overlay.hidden = true; return; }
  const src = `/api/pca/${state.a}/${state.image}.png`;
  if (overlay.getAttribute("src") !== src) overlay.src = src;
}

// ---------------------------------------------------------------- controls

function buildControls() {
  for (const [index, encoder] of session.encoders.entries()) {
    const label = encoder.problem ? `${encoder.name} (!)` : encoder.name;
    $("encoder-a").append(el("option", { value: index, textContent: label }));
    $("encoder-b").append(el("option", { value: index, textContent: label }));
  }
  for (const [column, values] of Object.entries(session.filters)) {
    const select = el("select", {}, [el("option", { value: "", textContent: "any" }),
      ...values.map((v) => el("option", { value: v, textContent: v }))]);
    select.dataset.column = column;
    select.onchange = () => {
      if (select.value === "") delete state.filters[column]; else state.filters[column] = select.value;
      state.page = 0;
      refresh();
    };
    $("filters").append(el("label", {}, [`${column} `, select]));
  }
  $("encoder-a").onchange = (e) => { state.a = Number(e.target.value); refresh(); };
  $("encoder-b").onchange = (e) => { state.b = e.target.value === "" ? null : Number(e.target.value); refresh(); };
  $("count").onchange = (e) => { state.count = Number(e.target.value); refresh(); };
  $("by").onchange = (e) => { state.by = e.target.value; writeUrl(); loadNeighbours(); };
  $("prev").onclick = () => { state.page = Math.max(0, state.page - 1); loadGallery().catch((e) => showError(e.message)); };
  $("next").onclick = () => { state.page += 1; loadGallery().catch((e) => showError(e.message)); };
  $("pca").onchange = (e) => { state.pca = e.target.checked; writeUrl(); showPca(); };
  $("opacity").oninput = (e) => { state.opacity = Number(e.target.value); writeUrl(); showPca(); };
  $("permalink").onclick = () => {
    const field = $("permalink-text");
    field.hidden = false;
    field.value = location.href;
    field.select();
    navigator.clipboard?.writeText(location.href).catch(() => {});
  };
  $("save-figure").onclick = () => {
    const link = el("a", { href: `/api/figure.png?${clickQuery(state.a)}`, download: "" });
    document.body.append(link);
    link.click();
    link.remove();
  };
  const stage = $("stage");
  stage.onclick = (event) => {
    if (state.image === null) return;
    [state.x, state.y] = pointOf(event);
    drawMarker();
    writeUrl();
    $("errors").replaceChildren();
    runQuery();
  };
  stage.onmousemove = (event) => { if (state.image !== null) drawMarker($("hover"), ...pointOf(event)); };
  stage.onmouseleave = () => { $("hover").hidden = true; };
}

function syncControls() {
  $("encoder-a").value = state.a;
  $("encoder-b").value = state.b ?? "";
  if (![...$("count").options].some((o) => Number(o.value) === state.count)) {
    $("count").append(el("option", { textContent: state.count }));
  }
  $("count").value = state.count;
  $("by").value = state.by;
  $("pca").checked = state.pca;
  $("opacity").value = state.opacity;
  for (const select of document.querySelectorAll("#filters select")) select.value = state.filters[select.dataset.column] ?? "";
}

async function refresh() {
  $("errors").replaceChildren();
  try {
    syncControls();
    await loadGallery();
    if (state.image !== null) await selectImage(state.image, true);
    else document.body.dataset.state = "idle";
  } catch (error) {
    showError(error.message);
  }
}

async function start() {
  try {
    session = await api("/api/session");
    window.raddinoView.session = session;
    buildControls();
    readUrl();
    if (!session.encoders[state.a]) state.a = 0;
    if (state.b !== null && !session.encoders[state.b]) state.b = null;
    await refresh();
  } catch (error) {
    showError(error.message);
  }
}

start();
