// StoryMem model files: the files ComfyUI's Missing Models dialog cannot fetch (the StoryMem LoRA .pth pair, the
// aesthetic head), offered with size and license when a workflow that names them opens without them, and from the
// menu (Extensions > StoryMem > Get model files). Downloads run on the server (nodes/model_files.py): resumable,
// checked, put under their name only when whole. A core LoRA loader given StoryMem's raw .pth is named in a warning.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTE = "/storymem/model-files";
const PANEL_ID = "storymem-model-files";
const COMMAND = "StoryMem.GetModelFiles";
const POLL_MS = 500;
const OWN_LORA_NODE = "StoryMem LoRA (MODEL)";

const STYLE = `
#${PANEL_ID} { position: fixed; right: 16px; bottom: 64px; z-index: 1000; width: 560px; max-height: 60vh;
  overflow: auto; box-sizing: border-box; padding: 10px 12px; border-radius: 8px; font: 12px sans-serif;
  color: var(--input-text, #ddd); background: var(--comfy-menu-bg, #202020); border: 1px solid var(--border-color, #555);
  box-shadow: 0 4px 16px rgba(0, 0, 0, 0.5); }
#${PANEL_ID} h3 { margin: 0 0 4px; font-size: 13px; }
#${PANEL_ID} p { margin: 0 0 8px; opacity: 0.8; }
#${PANEL_ID} table { width: 100%; border-collapse: collapse; }
#${PANEL_ID} td { padding: 4px 4px; border-top: 1px solid rgba(128, 128, 128, 0.3); vertical-align: middle; }
#${PANEL_ID} a { color: #7ab8ff; }
#${PANEL_ID} progress { width: 100%; }
#${PANEL_ID} .storymem-close { float: right; cursor: pointer; background: none; border: none; color: inherit; font-size: 14px; }
#${PANEL_ID} .storymem-error { color: #ff7b7b; }
`;

function size(bytes, exact) {
  const units = [["GB", 1e9], ["MB", 1e6], ["KB", 1e3]];
  const [unit, scale] = units.find(([, s]) => bytes >= s) ?? ["bytes", 1];
  const shown = `${(bytes / scale).toFixed(unit === "bytes" ? 0 : 1)} ${unit}`;
  return exact ? shown : `about ${shown}`;
}

async function call(path, name) {
  const response = await api.fetchApi(`${ROUTE}${path}`, name === undefined ? {} : { method: "POST", body: JSON.stringify({ name }) });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error ?? `HTTP ${response.status}`);
  return answer;
}

// The model files a graph names: its nodes' `properties.models` (as ComfyUI's dialog reads them) and widget values.
function namedBy(graph) {
  const names = new Set();
  for (const node of graph?.nodes ?? []) {
    for (const model of node.properties?.models ?? []) names.add(`${model.directory}/${model.name}`);
    for (const shown of node.widgets ?? []) if (typeof shown.value === "string") names.add(shown.value);
  }
  return (file) => names.has(`${file.folder}/${file.name}`) || names.has(file.name);
}

function state(file) {
  const job = file.job;
  if (file.present) return { text: "in place", busy: false };
  if (job?.state === "running") return { text: "downloading", busy: true, done: job.done, total: job.total };
  if (job?.state === "failed" || job?.state === "stopped") return { text: job.error, error: job.state === "failed", busy: false };
  return { text: file.partial ? `${size(file.partial, true)} already here: continues` : "missing", busy: false };
}

function row(file) {
  const now = state(file);
  const tr = document.createElement("tr");
  tr.dataset.name = file.name;
  const what = document.createElement("td");
  what.innerHTML = `<b></b><br><span></span>`;
  what.querySelector("b").textContent = file.name;
  what.querySelector("span").textContent = `${file.folder}/ · ${size(file.size, file.exact_size)} · `;
  const license = document.createElement("a");
  Object.assign(license, { href: file.page, target: "_blank", rel: "noopener", textContent: file.license });
  license.className = "storymem-license";
  what.querySelector("span").append(license);
  const progress = document.createElement("td");
  progress.style.width = "150px";
  if (now.busy) {
    const bar = document.createElement("progress");
    Object.assign(bar, { max: now.total || 1, value: now.done });
    progress.append(bar, `${size(now.done, true)} / ${size(now.total, true)}`);
  } else {
    progress.textContent = now.text;
    if (now.error) progress.className = "storymem-error";
  }
  const action = document.createElement("td");
  if (!file.present) {
    const button = document.createElement("button");
    button.textContent = now.busy ? "Stop" : "Download";
    button.className = now.busy ? "storymem-stop" : "storymem-download";
    button.onclick = () => act(now.busy ? "/stop" : "/start", file.name);
    action.append(button);
  }
  tr.append(what, progress, action);
  return tr;
}

let shownFilter = null;
let polling = null;

function panel() {
  let element = document.getElementById(PANEL_ID);
  if (!element) {
    element = document.createElement("div");
    element.id = PANEL_ID;
    document.body.append(element);
  }
  return element;
}

function close() {
  document.getElementById(PANEL_ID)?.remove();
  shownFilter = null;
  clearTimeout(polling);
  polling = null;
}

function draw(answer) {
  const files = answer.files.filter(shownFilter);
  const element = panel();
  element.replaceChildren();
  const shut = document.createElement("button");
  Object.assign(shut, { className: "storymem-close", textContent: "✕", title: "Close" });
  shut.onclick = close;
  const title = document.createElement("h3");
  title.textContent = "StoryMem model files";
  const note = document.createElement("p");
  note.textContent = "ComfyUI's Missing Models dialog cannot fetch these. Each goes into the folder shown, under its "
    + "license (read it before use); a download that stops continues where it stopped.";
  const table = document.createElement("table");
  table.append(...files.map(row));
  element.append(shut, title, note, table);
  const missing = files.filter((f) => !f.present && f.job?.state !== "running");
  if (missing.length > 1) {
    const all = document.createElement("button");
    all.className = "storymem-download-all";
    all.textContent = `Download all ${missing.length} (${size(missing.reduce((sum, f) => sum + f.size, 0), missing.every((f) => f.exact_size))})`;
    all.onclick = async () => { for (const file of missing) await act("/start", file.name, false); refresh(); };
    element.append(all);
  }
}

async function refresh() {
  if (!shownFilter) return;
  let answer;
  try {
    answer = await call("");
  } catch (error) {
    return;
  }
  if (!shownFilter) return;
  const wasRunning = polling !== null;
  draw(answer);
  const running = answer.files.some((f) => f.job?.state === "running");
  clearTimeout(polling);
  polling = running ? setTimeout(refresh, POLL_MS) : null;
  if (wasRunning && !running) app.refreshComboInNodes?.(); // new files appear in the loaders' lists
}

async function act(path, name, redraw = true) {
  try {
    await call(path, name);
  } catch (error) {
    app.extensionManager?.toast?.add({ severity: "error", summary: "StoryMem", detail: error.message, life: 10000 });
  }
  if (redraw) await refresh();
}

function open(filter) {
  shownFilter = filter;
  refresh();
}

// A core LoRA loader given StoryMem's raw .pth applies nothing (ComfyUI logs "lora key not loaded" per layer).
function warnRawLoras(graph, raw) {
  for (const node of graph?.nodes ?? []) {
    if (node.type.startsWith("StoryMem")) continue;
    const chosen = node.widgets?.find((w) => w.name === "lora_name")?.value;
    if (!raw.includes(chosen)) continue;
    const detail = `${node.title} (node ${node.id}) is given ${chosen}, StoryMem's raw LoRA: ComfyUI's LoRA loaders `
      + `match none of its layers and apply nothing. Use ${OWN_LORA_NODE} instead, or convert the file with `
      + "python -m storymem_core convert-lora.";
    console.warn(`StoryMem: ${detail}`);
    app.extensionManager?.toast?.add({ severity: "warn", summary: "StoryMem LoRA", detail, life: 20000 });
  }
}

async function checkGraph() {
  const graph = app.graph;
  let answer;
  try {
    answer = await call("");
  } catch (error) {
    return;
  }
  if (app.graph !== graph) return;
  warnRawLoras(graph, answer.raw_storymem_loras);
  const needed = namedBy(graph);
  const missing = new Set(answer.files.filter((f) => needed(f) && !f.present).map((f) => f.name));
  if (missing.size) open((f) => missing.has(f.name)); // they stay listed as they arrive
}

app.registerExtension({
  name: "StoryMem.ModelFiles",
  commands: [{ id: COMMAND, label: "StoryMem: get model files", icon: "pi pi-download", function: () => open(() => true) }],
  menuCommands: [{ path: ["Extensions", "StoryMem"], commands: [COMMAND] }],
  async setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
  },
  async afterConfigureGraph() {
    await checkGraph();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const inputs = { ...nodeData.input?.required, ...nodeData.input?.optional };
    if (!("lora_name" in inputs) || nodeData.name.startsWith("StoryMem")) return;
    const original = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function (name, ...rest) {
      const result = original?.apply(this, [name, ...rest]);
      if (name === "lora_name") checkGraph();
      return result;
    };
  },
});
