// covidseg viewer: drop an X-ray, see what POST /segment returns, tune the threshold, download the results.
// Only the public API (/model, /segment) on this page's own origin; no other request of any kind.
"use strict";

// The service's overlay colours (app/pipeline/render.py: INFECTION_RGB, LUNG_OUTLINE_RGB).
const INFECTION_RGB = [255, 0, 0];
const OUTLINE_RGB = [0, 200, 255];
const RESEGMENT_DELAY_MS = 150;

const $ = (id) => document.getElementById(id);
const state = { apiKey: null, file: null, result: null, sequence: 0, timer: null };

function headers() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

// The API's own words for a refusal: {"detail", "code"} as JSON, else the HTTP status line.
async function apiError(response) {
  let text = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.detail) text = `${body.detail} (${body.code || response.status}, HTTP ${response.status})`;
  } catch (_) { /* not JSON: keep the status line */ }
  return new Error(text);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function loadModel() {
  const response = await fetch("/model", { headers: headers() });
  if (response.status === 401) return askForKey(state.apiKey ? "That key was refused." : "");
  if (response.status === 503) {
    setStatus("The model is loading…");
    setTimeout(loadModel, 2000);
    return;
  }
  if (!response.ok) throw await apiError(response);
  const model = await response.json();
  $("key-form").hidden = true;
  const loaded = model.loaded;
  $("model-line").textContent = `${loaded.name} ${loaded.version} (${loaded.precision}, ${loaded.providers[0]})`;
  $("threshold").value = model.default_threshold;
  showThreshold();
  $("file").disabled = false;
  $("threshold").disabled = false;
  setStatus("Ready: drop or choose an image.");
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("file").disabled = true;
  $("model-line").textContent = "An API key is needed.";
  showError(message);
  $("api-key").focus();
}

function threshold() {
  return Number($("threshold").value);
}

function showThreshold() {
  $("threshold-value").textContent = threshold().toFixed(2);
}

function segmentUrl(params) {
  return "/segment?" + new URLSearchParams({ threshold: String(threshold()), ...params });
}

async function postFile(params) {
  const form = new FormData();
  form.append("file", state.file, state.file.name || "image");
  const response = await fetch(segmentUrl(params), { method: "POST", body: form, headers: headers() });
  if (!response.ok) throw await apiError(response);
  return response;
}

async function segment() {
  if (!state.file) return;
  const sequence = ++state.sequence;  // a slower earlier answer must not overwrite a later one
  setStatus(`Segmenting at threshold ${threshold().toFixed(2)}…`);
  document.body.classList.add("busy");
  try {
    const response = await postFile({ include: "image,mask,lung" });
    const result = await response.json();
    if (sequence !== state.sequence) return;
    await draw(result);
    showResult(result);
    showError("");
    setStatus("Done.");
  } catch (err) {
    if (sequence !== state.sequence) return;
    state.result = null;
    $("view").hidden = true;
    $("results").hidden = true;
    showError(err.message);
    setStatus("The service refused this file.");
  } finally {
    if (sequence === state.sequence) document.body.classList.remove("busy");
  }
}

function percent(value) {
  return `${(100 * value).toFixed(2)} %`;
}

function showValue(id, value, text) {
  $(id).dataset.value = String(value);
  $(id).textContent = text;
}

function showResult(result) {
  state.result = result;
  showValue("ppar", result.ppar, percent(result.ppar));
  showValue("infected-lung-share", result.infected_lung_share, percent(result.infected_lung_share));
  showValue("lung-fraction", result.lung_fraction, percent(result.lung_fraction));
  showValue("severity", result.severity, result.severity);
  showValue("result-threshold", result.threshold, result.threshold.toFixed(2));
  showValue("result-model", `${result.model.name} ${result.model.version}`, `${result.model.name} ${result.model.version}`);
  showValue("time-taken", result.timings_ms.total, `${result.timings_ms.total.toFixed(0)} ms`);
  for (const button of document.querySelectorAll(".dicom-only")) button.hidden = !result.dicom;
  $("results").hidden = false;
}

async function bitmapOf(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return createImageBitmap(new Blob([bytes], { type: "image/png" }));
}

function pixelsOf(bitmap) {
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height);
}

function sized(id, width, height) {
  const canvas = $(id);
  canvas.width = width;
  canvas.height = height;
  return canvas.getContext("2d");
}

// Paint the pixels where on[i] is set in colour, the rest transparent.
function paint(id, width, height, on, rgb) {
  const context = sized(id, width, height);
  const image = context.createImageData(width, height);
  for (let i = 0; i < on.length; i++) {
    if (!on[i]) continue;
    image.data.set(rgb, 4 * i);
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function maskOf(pixels) {
  const mask = new Uint8Array(pixels.width * pixels.height);
  for (let i = 0; i < mask.length; i++) mask[i] = pixels.data[4 * i] > 127 ? 1 : 0;
  return mask;
}

// Box sums of a 0/1 array over (2r+1)-wide windows along rows (step 1) or columns (step width),
// clamped at the edges as the service's outline is (scipy's minimum filter, mode "nearest").
function boxSum(values, width, height, r, alongRows) {
  const out = new Int32Array(values.length);
  const [lines, length, stride, step] = alongRows ? [height, width, width, 1] : [width, height, 1, width];
  const prefix = new Int32Array(length + 1);
  for (let line = 0; line < lines; line++) {
    const start = line * stride;
    for (let k = 0; k < length; k++) prefix[k + 1] = prefix[k] + values[start + k * step];
    for (let k = 0; k < length; k++) {
      out[start + k * step] = prefix[Math.min(length, k + r + 1)] - prefix[Math.max(0, k - r)];
    }
  }
  return out;
}

// The lung's boundary: lung pixels with a non-lung pixel within r (the mask minus its erosion).
function outlineOf(lung, width, height) {
  const r = Math.max(1, Math.round(Math.max(width, height) / 256));
  const outside = lung.map((v) => 1 - v);
  const near = boxSum(boxSum(outside, width, height, r, true), width, height, r, false);
  return lung.map((v, i) => (v && near[i] > 0 ? 1 : 0));
}

async function draw(result) {
  const [image, mask, lung] = await Promise.all(
    [result.image_png_base64, result.mask_png_base64, result.lung_png_base64].map(bitmapOf));
  const { width, height } = image;
  sized("image-layer", width, height).drawImage(image, 0, 0);
  paint("infection-layer", width, height, maskOf(pixelsOf(mask)), INFECTION_RGB);
  paint("outline-layer", width, height, outlineOf(maskOf(pixelsOf(lung)), width, height), OUTLINE_RGB);
  $("view").hidden = false;
  applyLayers();
  fitView();
}

// Show the whole image as large as the window allows, at its own aspect (small images scaled up).
function fitView() {
  const image = $("image-layer");
  if ($("view").hidden || !image.width) return;
  const top = $("view").getBoundingClientRect().top + window.scrollY;
  const room = Math.max(320, window.innerHeight - Math.min(top, window.innerHeight / 2) - 24);
  const scale = Math.min($("view").clientWidth / image.width, room / image.height);
  $("stack").style.width = `${Math.floor(image.width * scale)}px`;
  $("stack").style.height = `${Math.floor(image.height * scale)}px`;
}

function applyLayers() {
  const opacity = Number($("opacity").value);
  $("opacity-value").textContent = `${Math.round(100 * opacity)} %`;
  $("infection-layer").style.opacity = String(opacity);
  $("outline-layer").hidden = !$("show-outline").checked;
}

function choose(file) {
  if (!file) return;
  state.file = file;
  segment();
}

async function download(button) {
  if (!state.file) return;
  const params = { format: button.dataset.format };
  if (button.dataset.output) params.output = button.dataset.output;
  try {
    const blob = await (await postFile(params)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = button.dataset.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

function wire() {
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (!$("file").disabled) choose(e.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", showThreshold);
  $("threshold").addEventListener("change", () => {
    clearTimeout(state.timer);
    state.timer = setTimeout(segment, RESEGMENT_DELAY_MS);  // arrow keys held down: one request at the end
  });
  $("opacity").addEventListener("input", applyLayers);
  window.addEventListener("resize", fitView);
  $("show-outline").addEventListener("change", applyLayers);
  for (const button of document.querySelectorAll("#downloads button")) {
    button.addEventListener("click", () => download(button));
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.apiKey = $("api-key").value.trim();
    loadModel().catch((err) => showError(err.message));
  });
}

wire();
loadModel().catch((err) => showError(`The service did not answer: ${err.message}`));
