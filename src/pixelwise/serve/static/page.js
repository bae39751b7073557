// The page of `pixelwise serve`: one image in, its mask drawn over it in the class colours.
// Plain JavaScript against the server's own API (no build step): GET model, POST predict?output=json.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "pixelwise-api-key";
const state = { model: null, classes: [], enabled: [], image: null, index: null, width: 0, height: 0, stem: "image",
  file: null, tta: false };

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function detail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModel() {
  const response = await fetch("model", { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("model-name").textContent = "API key needed";
    showError(await detail(response));
    return;
  }
  if (!response.ok) {
    showError(`the model description could not be read: ${await detail(response)}`);
    return;
  }
  $("key-box").hidden = true;
  showError("");
  state.model = await response.json();
  state.classes = state.model.classes;
  state.enabled = state.classes.map(() => true);
  const miou = state.model.metrics && state.model.metrics.best_miou;
  $("model-name").textContent = `${state.model.source} (${state.model.backend}, ${state.classes.length} classes` +
    (typeof miou === "number" ? `, val mIoU ${miou.toFixed(3)})` : ")");
  fillLegend(null);
}

function fillLegend(counts) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  state.classes.forEach((c, i) => {
    const row = document.createElement("tr");
    row.dataset.class = c.name;
    const pixels = counts ? counts[i].pixels : null;
    if (pixels === 0) row.className = "absent";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.enabled[i];
    box.setAttribute("aria-label", `show ${c.name}`);
    box.addEventListener("change", () => { state.enabled[i] = box.checked; render(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${c.color.join(",")})`;
    const cells = [box, null, counts ? `${(100 * counts[i].fraction).toFixed(2)}%` : "", pixels ?? ""];
    cells.forEach((content, col) => {
      const cell = document.createElement("td");
      if (col === 1) { cell.append(swatch, " ", c.name); } else if (content instanceof Node) { cell.append(content); }
      else { cell.textContent = String(content); }
      if (col >= 2) cell.className = "num";
      row.append(cell);
    });
    body.append(row);
  });
}

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

// Pixels of a bitmap at (w, h); colour management off, so a grey PNG gives back exactly its values.
function pixelsOf(bitmap, w, h) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h);
}

async function browserPicture(file) {
  // 8-bit models: the browser shows the file itself (EXIF orientation applied, as the server does). Other pixel
  // types, and files the browser cannot decode (TIFF, many bands), are shown as the server renders them.
  if (state.model.input && state.model.input.dtype !== "uint8") return null;
  try {
    return await createImageBitmap(file);
  } catch (e) {
    return null;
  }
}

async function segment(file) {
  if (!state.model) { await loadModel(); if (!state.model) return; }
  showError("");
  $("status").textContent = `segmenting ${file.name}...`;
  const bitmap = await browserPicture(file);
  const form = new FormData();
  form.append("file", file, file.name);
  const query = `output=json&shapes=none&mask=true&image=${bitmap === null}&tta=${$("tta").checked}`;
  let response;
  try {
    response = await fetch(`predict?${query}`, { method: "POST", body: form, headers: headers() });
  } catch (e) {
    $("status").textContent = "";
    showError(`the server could not be reached (${e.message})`);
    return;
  }
  if (!response.ok) {
    $("status").textContent = "";
    showError(`${response.status}: ${await detail(response)}`);
    if (response.status === 401) $("key-box").hidden = false;
    return;
  }
  const answer = await response.json();
  state.width = answer.width;
  state.height = answer.height;
  state.stem = file.name.replace(/\.[^.]*$/, "") || "image";
  const maskBitmap = await createImageBitmap(new Blob([base64Bytes(answer.mask_png)], { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const maskData = pixelsOf(maskBitmap, state.width, state.height).data;
  state.index = new Uint8Array(state.width * state.height);
  for (let p = 0; p < state.index.length; p++) state.index[p] = maskData[4 * p];
  $("note").textContent = "";
  let picture = bitmap;
  if (picture === null) {
    picture = await createImageBitmap(new Blob([base64Bytes(answer.image_png)], { type: "image/png" }));
    $("note").textContent = "the image is shown as the server rendered it (contrast-stretched unless 8-bit)";
  } else if (picture.width !== state.width || picture.height !== state.height) {
    $("note").textContent = "the image is shown scaled to the mask's size";
  }
  state.image = pixelsOf(picture, state.width, state.height);
  fillLegend(answer.classes);
  state.file = file;
  state.tta = $("tta").checked;
  const link = $("download-mask");
  if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
  link.href = "#";
  link.download = `${state.stem}_mask.png`;
  $("result").hidden = false;
  $("status").textContent = `${file.name}: ${state.width}x${state.height} pixels`;
  render();
}

function render() {
  if (!state.index) return;
  const canvas = $("view");
  canvas.width = state.width;
  canvas.height = state.height;
  const out = new ImageData(new Uint8ClampedArray(state.image.data), state.width, state.height);
  const alpha = Number($("opacity").value) / 100;
  const colours = state.classes.map((c) => c.color);
  const px = out.data;
  for (let p = 0; p < state.index.length; p++) {
    const k = state.index[p];
    if (k >= colours.length || !state.enabled[k]) continue;
    const c = colours[k], o = 4 * p;
    px[o] = px[o] * (1 - alpha) + c[0] * alpha;
    px[o + 1] = px[o + 1] * (1 - alpha) + c[1] * alpha;
    px[o + 2] = px[o + 2] * (1 - alpha) + c[2] * alpha;
    px[o + 3] = 255;
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
  canvas.dataset.ready = "1";
  $("download-overlay").download = `${state.stem}_overlay.png`;
  canvas.toBlob((blob) => {
    const link = $("download-overlay");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
  }, "image/png");
}

// The mask file is the API's default answer, the palette PNG `pixelwise predict` writes (class indices shown in
// the class colours); it is asked for when first wanted, not with every prediction.
async function downloadMask(e) {
  const link = $("download-mask");
  if (link.href.startsWith("blob:") || !state.file) return;  // ready: the browser downloads it
  e.preventDefault();
  const form = new FormData();
  form.append("file", state.file, state.file.name);
  const response = await fetch(`predict?tta=${state.tta}`, { method: "POST", body: form, headers: headers() });
  if (!response.ok) {
    showError(`${response.status}: ${await detail(response)}`);
    return;
  }
  link.href = URL.createObjectURL(await response.blob());
  link.click();
}

function setAll(on) {
  state.enabled = state.classes.map(() => on);
  document.querySelectorAll("#legend tbody input").forEach((box) => { box.checked = on; });
  render();
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) segment($("file").files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) segment(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    render();
  });
  $("all").addEventListener("click", () => setAll(true));
  $("none").addEventListener("click", () => setAll(false));
  $("download-mask").addEventListener("click", downloadMask);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value);
    loadModel();
  });
  loadModel();
}

init();
