// cutq's page: send images to POST /v1/cutout, two at a time at most, and show each result on a card.
// URLs are relative, so the page also works behind a reverse proxy that serves it under a path prefix.
"use strict";

const MAX_PARALLEL = 2; // the server's queue is shared: never flood it
const MAX_RETRIES = 3; // 503 + Retry-After (busy or still loading)
const TOKEN_KEY = "cutq-token";

const $ = (selector) => document.querySelector(selector);
const els = {
  status: $("#server-status"), model: $("#model"), modelInfo: $("#model-info"), onlyMask: $("#only-mask"),
  background: $("#background"), bgcolor: $("#bgcolor"), tokenForm: $("#token-form"), token: $("#token"),
  drop: $("#drop"), files: $("#files"), results: $("#results"), resultsHead: $("#results-head"), clear: $("#clear"),
  announce: $("#announce"),
};

const queue = [];
let running = 0;
let pasted = 0;
let cards = 0;
let models = [];
let serverReady = false; // images wait in the queue until every variant is loaded (and a token works)

// ---- server access ----------------------------------------------------------------------------------------

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText || "error"}`.trim();
}

function needToken() {
  els.tokenForm.hidden = false;
  if (!models.length) els.model.replaceChildren(new Option("Needs the access token"));
  setStatus("Token needed", "warn");
}

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = `pill ${kind}`.trim();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function retryDelay(response) {
  const value = response.headers.get("Retry-After");
  const seconds = Number(value);
  if (value && Number.isFinite(seconds)) return Math.max(0, seconds) * 1000;
  const date = Date.parse(value || "");
  return Number.isNaN(date) ? 2000 : Math.max(0, date - Date.now());
}

// ---- models -----------------------------------------------------------------------------------------------

const megabytes = (bytes) => `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`;

function fidelity(m) {
  if (m.ssim_min != null) return `SSIM min ${m.ssim_min.toFixed(3)} vs FP32`;
  if (m.precision === "fp32") return "FP32 reference";
  return "fidelity not measured";
}

async function loadModels() {
  let response;
  try {
    response = await fetch("v1/models", { headers: authHeaders() });
  } catch (_) {
    setStatus("Server unreachable", "error");
    setTimeout(loadModels, 3000);
    return;
  }
  if (response.status === 401) return needToken();
  if (!response.ok) {
    setStatus(await errorMessage(response), "error");
    return;
  }
  const body = await response.json();
  const previous = els.model.value;
  models = body.models || [];
  els.model.replaceChildren(...models.map((m) => {
    const option = new Option(`${m.name} · ${megabytes(m.size_bytes)} · ${fidelity(m)}${m.default ? " (default)" : ""}`,
      m.name);
    option.selected = previous ? m.name === previous : m.default;
    return option;
  }));
  els.model.disabled = models.length === 0;
  describeModel();
  serverReady = Boolean(body.ready);
  if (serverReady) {
    setStatus("Ready", "ok");
    pump();
    return;
  }
  const failed = await loadError();
  if (failed) {
    setStatus(`Loading failed: ${failed}`, "error"); // the server will not recover: stop polling
  } else {
    setStatus("Loading models…", "warn");
    setTimeout(loadModels, 2000);
  }
}

async function loadError() {
  try {
    const body = await (await fetch("readyz")).json();
    return body.error || "";
  } catch (_) {
    return "";
  }
}

function describeModel() {
  const m = models.find((x) => x.name === els.model.value);
  if (!m) return;
  const cpus = { "vnni-or-arm": "exact on VNNI or ARM CPUs", "?": "CPU portability unknown" }[m.cpus] || "";
  const parts = [m.description, m.gmac != null ? `${m.gmac} GMAC` : "", cpus];
  els.modelInfo.textContent = parts.filter(Boolean).join(" · ");
}

// ---- options ----------------------------------------------------------------------------------------------

function hexToRgba(hex) {
  const n = parseInt(hex.slice(1), 16);
  return `${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},255`;
}

function currentOptions() {
  const params = new URLSearchParams();
  if (els.model.value) params.set("model", els.model.value);
  if (els.onlyMask.checked) {
    params.set("only_mask", "true");
  } else {
    const bg = document.querySelector('input[name="bg"]:checked').value;
    if (bg === "white") params.set("bgcolor", "255,255,255,255");
    if (bg === "custom") params.set("bgcolor", hexToRgba(els.bgcolor.value));
  }
  return params;
}

function syncOptions() {
  els.background.disabled = els.onlyMask.checked; // the server ignores the background for a mask
}

// ---- cards ------------------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const stem = (name) => (name.replace(/\.[^./\\]+$/, "") || "image");

function addCard(file) {
  const id = `card-${++cards}`;
  const original = el("img", { class: "original", alt: `Original: ${file.name}` });
  const sourceUrl = URL.createObjectURL(file);
  original.src = sourceUrl;
  original.addEventListener("error", () => original.replaceWith(el("p", { class: "placeholder", text: "No preview" })));
  const status = el("span", { class: "badge", text: "Queued" });
  const output = el("div", { class: "pane-body checker" }, el("p", { class: "placeholder", text: "Waiting…" }));
  const meta = el("p", { class: "meta" });
  const actions = el("div", { class: "actions" });
  const card = el("article", { class: "card", id, "data-status": "queued", "aria-labelledby": `${id}-title` },
    el("header", { class: "card-head" }, el("h3", { id: `${id}-title`, text: file.name || "image" }), status),
    el("div", { class: "panes" },
      el("figure", { class: "pane" }, el("figcaption", { text: "Original" }), el("div", { class: "pane-body" }, original)),
      el("figure", { class: "pane" }, el("figcaption", { text: "Cut-out" }), output)),
    el("footer", { class: "card-foot" }, meta, actions));
  card.cutqUrls = [sourceUrl]; // released by Clear
  els.results.append(card);
  els.resultsHead.hidden = false;
  return { file, card, status, output, meta, actions, urls: card.cutqUrls, params: currentOptions() };
}

function setCard(job, state, label) {
  job.card.dataset.status = state;
  job.card.setAttribute("aria-busy", String(state === "working" || state === "queued" || state === "retrying"));
  job.status.textContent = label;
  job.status.className = `badge ${state}`;
}

function showResult(job, blob, response, roundTrip, retries) {
  const url = URL.createObjectURL(blob);
  job.urls.push(url);
  const model = response.headers.get("X-Cutq-Model") || job.params.get("model") || "";
  const latency = Number(response.headers.get("X-Cutq-Latency-Ms"));
  const queued = Number(response.headers.get("X-Cutq-Queue-Ms"));
  const name = `${stem(job.file.name)}-cutout.png`;
  job.output.replaceChildren(el("img", { class: "cutout", src: url, alt: `Cut-out of ${job.file.name}` }));
  const timing = Number.isFinite(latency) ? `${Math.round(latency)} ms on the server` : "";
  const wait = Number.isFinite(queued) && queued >= 1 ? ` (+${Math.round(queued)} ms queued)` : "";
  const retried = retries ? `, after ${retries} ${retries > 1 ? "retries" : "retry"}` : "";
  job.meta.replaceChildren(
    el("span", { class: "model", text: model }),
    el("span", { text: `${timing}${wait}` }),
    el("span", { text: `${(roundTrip / 1000).toFixed(2)} s round trip${retried}` }),
  );
  job.actions.replaceChildren(el("a", { class: "download button", href: url, download: name, text: "Download PNG" }));
  setCard(job, "done", "Done");
  els.announce.textContent = `${job.file.name}: done`;
}

function showError(job, message, retryable = true) {
  job.output.classList.remove("checker");
  job.output.replaceChildren(el("p", { class: "error-message", text: message }));
  job.actions.replaceChildren();
  setCard(job, "error", "Failed");
  els.announce.textContent = `${job.file.name} failed: ${message}`;
  if (!retryable) return; // the same file would fail the same way
  const retry = el("button", { type: "button", class: "secondary", text: "Retry" });
  retry.addEventListener("click", () => {
    job.output.classList.add("checker");
    job.output.replaceChildren(el("p", { class: "placeholder", text: "Waiting…" }));
    job.meta.replaceChildren();
    job.actions.replaceChildren();
    enqueue(job);
  });
  job.actions.replaceChildren(retry);
}

// ---- the queue --------------------------------------------------------------------------------------------

async function runJob(job) {
  const started = performance.now();
  for (let attempt = 0; ; attempt++) {
    setCard(job, "working", "Working…");
    job.output.replaceChildren(el("p", { class: "placeholder", text: "Cutting out…" }));
    const form = new FormData();
    form.append("file", job.file, job.file.name || "image");
    let response;
    try {
      response = await fetch(`v1/cutout?${job.params}`, { method: "POST", body: form, headers: authHeaders() });
    } catch (err) {
      return showError(job, `Could not reach the server (${err.message}).`);
    }
    if (response.ok) return showResult(job, await response.blob(), response, performance.now() - started, attempt);
    const message = await errorMessage(response);
    if (response.status === 503 && attempt < MAX_RETRIES) {
      const delay = retryDelay(response);
      setCard(job, "retrying", `Retrying in ${Math.ceil(delay / 1000)} s`);
      job.output.replaceChildren(el("p", { class: "placeholder", text: `${message}; retrying…` }));
      await sleep(delay);
      continue;
    }
    if (response.status === 401) {
      needToken();
      return showError(job, `${message}. Enter the access token above, then retry.`);
    }
    return showError(job, message, response.status >= 500 || response.status === 408);
  }
}

function enqueue(job) {
  setCard(job, "queued", "Queued");
  queue.push(job);
  pump();
}

function pump() {
  while (serverReady && running < MAX_PARALLEL && queue.length) {
    const job = queue.shift();
    running++;
    runJob(job)
      .catch((err) => showError(job, `Unexpected error: ${err.message}`))
      .finally(() => { running--; pump(); });
  }
}

function addFiles(files) {
  for (const file of files) enqueue(addCard(file));
}

// ---- input: choose, drop, paste ---------------------------------------------------------------------------

els.files.addEventListener("change", () => {
  addFiles([...els.files.files]);
  els.files.value = ""; // choosing the same file again still triggers a change
});

let dragDepth = 0;
document.addEventListener("dragenter", (e) => {
  if (![...(e.dataTransfer?.types || [])].includes("Files")) return;
  dragDepth++;
  els.drop.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) els.drop.classList.remove("dragging");
});
document.addEventListener("dragover", (e) => e.preventDefault()); // let a drop anywhere land here, not navigate
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  els.drop.classList.remove("dragging");
  const files = [...(e.dataTransfer?.files || [])];
  if (files.length) addFiles(files);
});

document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData?.files || [])].map((file) => {
    if (file.name && file.name !== "image.png") return file;
    pasted++;
    const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
    return new File([file], `pasted-${pasted}.${ext}`, { type: file.type });
  });
  if (files.length) {
    e.preventDefault();
    addFiles(files);
  }
});

// ---- the rest ---------------------------------------------------------------------------------------------

els.model.addEventListener("change", describeModel);
els.onlyMask.addEventListener("change", syncOptions);
els.bgcolor.addEventListener("input", () => { document.querySelector('input[name="bg"][value="custom"]').checked = true; });

els.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem(TOKEN_KEY, els.token.value.trim());
  els.token.value = "";
  els.tokenForm.hidden = true;
  setStatus("Connecting…");
  loadModels();
});

els.clear.addEventListener("click", () => {
  for (const card of els.results.querySelectorAll('.card[data-status="done"], .card[data-status="error"]')) {
    card.remove();
    for (const url of card.cutqUrls || []) URL.revokeObjectURL(url);
  }
  els.resultsHead.hidden = !els.results.children.length;
});

syncOptions();
loadModels();
