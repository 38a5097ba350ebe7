// The demo page: the form, the job's progress, the two 3D views, downloads and the gallery.
// Talks only to this server's /api (pointdiff/demo/server.py).
import { Viewer } from "/static/viewer.js";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prompt", "seed", "num_samples", "steps", "guidance", "sampler", "stray_ratio", "grid_size"];
const DOWNLOADS = [
  ["mesh.glb", "Mesh GLB"],
  ["mesh.ply", "Mesh PLY"],
  ["cloud.ply", "Cloud PLY"],
  ["cloud.npz", "Cloud NPZ"],
];
// test hook: state a browser test can wait on
const demo = (window.__demo = { ready: false, error: null, renderer: "", shown: null, job: null, progress: [] });
window.addEventListener("error", (e) => { demo.error = String(e.message || e); });
window.addEventListener("unhandledrejection", (e) => { demo.error = String(e.reason); });

let cloudView, meshView;
const thumbnails = new Map(); // result id -> PNG data URL, drawn in this browser

async function api(path, options) {
  const response = await fetch(path, options);
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  return { status: response.status, body };
}

function say(text, kind = "") {
  const p = $("message");
  p.textContent = text;
  p.className = kind;
}

function setDefaults(config) {
  const d = config.defaults, lim = config.limits;
  $("model-name").textContent = config.name;
  for (const [name, value] of Object.entries(d)) {
    const el = $(name);
    if (!el || value === null) continue;
    if (el.type === "checkbox") el.checked = value; else el.value = value;
  }
  for (const name of ["seed", "num_samples", "steps", "guidance", "stray_ratio", "grid_size"]) {
    [$(name).min, $(name).max] = lim[name];
  }
  $("prompt").maxLength = lim.prompt_chars;
  for (const s of lim.samplers) $("sampler").add(new Option(s, s, s === d.sampler, s === d.sampler));
  for (const text of config.examples) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", () => { $("prompt").value = text; $("prompt").focus(); });
    $("examples").append(b);
  }
}

function request() {
  const out = { mesh: $("mesh").checked };
  for (const name of FIELDS) {
    const v = $(name).value.trim();
    if (v !== "") out[name] = name === "prompt" || name === "sampler" ? v : Number(v);
  }
  return out;
}

function markField(field) {
  for (const name of FIELDS) $(name).classList.toggle("invalid", name === field);
  if ($(field)) $(field).focus();
}

function showProgress(status) {
  let text = "", fraction = 0;
  if (status.state === "queued") {
    text = status.position === 0 ? "queued: next in line" : `queued: ${status.position} request(s) ahead`;
  } else if (status.state === "running") {
    const stage = status.stage || "starting";
    const unit = status.stage === "base" || status.stage === "upsampler" ? "step " : "";
    text = status.steps ? `${stage}: ${unit}${status.step} of ${status.steps}` : stage;
    fraction = status.steps ? status.step / status.steps : 0;
  }
  $("progress-box").hidden = false;
  $("progress").value = fraction;
  $("progress-text").textContent = text;
  demo.progress.push(text);
}

async function poll(id) {
  for (;;) {
    const { status, body } = await api(`/api/jobs/${id}`);
    if (status !== 200) { say(body.error || `error ${status}`, "error"); break; }
    if (body.state === "done") {
      say(`done: ${body.results.length} result(s)`);
      for (const r of body.results.slice().reverse()) await showResult(r);
      break;
    }
    if (body.state === "failed") { say(body.error, "error"); break; }
    showProgress(body);
    await new Promise((r) => setTimeout(r, 400));
  }
  $("progress-box").hidden = true;
  $("generate").disabled = false;
  await refreshGallery();
}

async function submit(event) {
  event.preventDefault();
  markField(null);
  const data = request();
  if (!data.prompt) { say("prompt: type a prompt, or click an example", "error"); markField("prompt"); return; }
  $("generate").disabled = true;
  const { status, body } = await api("/api/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data),
  });
  if (status === 202) {
    demo.job = body.id;
    say("submitted");
    showProgress({ state: "queued", position: body.waiting - 1 });
    return poll(body.id);
  }
  $("generate").disabled = false;
  if (status === 503) say(body.error, "busy");
  else { say(body.field ? `${body.field}: ${body.error}` : body.error || `error ${status}`, "error"); markField(body.field); }
}

async function fetchBytes(rid, name) {
  const response = await fetch(`/api/results/${rid}/${name}`);
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

async function showResult(info) {
  demo.ready = false;
  cloudView.showCloud(await fetchBytes(info.id, "cloud.bin"));
  if (info.files.includes("mesh.glb")) await meshView.showGLB(await fetchBytes(info.id, "mesh.glb"));
  else meshView.clear();
  if (!thumbnails.has(info.id)) thumbnails.set(info.id, cloudView.thumbnail());
  const title = document.createElement("strong");
  title.textContent = info.prompt;
  const facts = document.createElement("div");
  facts.textContent = `seed ${info.seed} · ${info.points} points · ` +
    (info.faces ? `${info.faces} faces (${info.mesh})` : "no mesh");
  $("result-info").replaceChildren(title, facts);
  for (const note of info.notes) {
    const div = document.createElement("div");
    div.className = "note";
    div.textContent = note;
    $("result-info").append(div);
  }
  $("downloads").replaceChildren(...DOWNLOADS.filter(([f]) => info.files.includes(f)).map(([f, label]) => {
    const a = document.createElement("a");
    a.href = `/api/results/${info.id}/${f}`;
    a.download = `${info.name}_${f}`;
    a.textContent = label;
    a.className = "download";
    a.dataset.file = f;
    return a;
  }));
  demo.shown = info.id;
  demo.ready = true;
}

async function refreshGallery() {
  const { body } = await api("/api/results");
  const items = body.results || [];
  if (!items.length) return;
  $("gallery").replaceChildren(...items.map((info) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "item";
    b.title = `${info.prompt} (seed ${info.seed})`;
    if (thumbnails.has(info.id)) {
      const img = document.createElement("img");
      img.src = thumbnails.get(info.id);
      img.alt = info.prompt;
      b.append(img);
    }
    const caption = document.createElement("span");
    caption.textContent = `${info.prompt} · ${info.seed}`;
    b.append(caption);
    b.addEventListener("click", () => showResult(info).catch((e) => say(String(e), "error")));
    return b;
  }));
}

async function main() {
  cloudView = new Viewer($("cloud-view"));
  meshView = new Viewer($("mesh-view"));
  demo.cloud = cloudView;
  demo.mesh = meshView;
  const gl = cloudView.renderer.getContext();
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  demo.renderer = info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
  const { body } = await api("/api/config");
  setDefaults(body);
  $("form").addEventListener("submit", submit);
  const turn = (a) => { cloudView.rotate(a); meshView.rotate(a); };
  $("rotate-left").addEventListener("click", () => turn(-Math.PI / 6));
  $("rotate-right").addEventListener("click", () => turn(Math.PI / 6));
  $("reset-view").addEventListener("click", () => { cloudView.home(); meshView.home(); });
  await refreshGallery();
  demo.loaded = true;
}

main().catch((e) => { demo.error = String(e); say(String(e), "error"); });
