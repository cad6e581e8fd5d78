// StoryMem frontend: the memory bank as a strip of thumbnails under every node that outputs one, the shot list
// of a story under the Story Script node, shot nodes titled by what they make and playing their shot.
// Served by ComfyUI from the pack's WEB_DIRECTORY.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const BANK_TYPE = "STORYMEM_BANK";
const BANK_LINK_COLOUR = "#e0a030"; // memory-bank links stand out from IMAGE / MODEL links
const BANK_WIDGET = "storymem_memory";
const SHOTS_WIDGET = "storymem_shot_list";
const VIDEO_WIDGET = "storymem_video";
const STORY_NODE = "StoryMemStoryScript";
const STORY_SHOT_NODE = "StoryMemStoryShot";
const FIRST_SHOT_NODE = "StoryMemFirstShot";
const SHOT_NODES = [FIRST_SHOT_NODE, "StoryMemShot"];
const SEEDED_NODES = [...SHOT_NODES, "StoryMemStoryRunner"];
const LINK_ONLY = ["prompt", "cut"]; // shown as sockets alone while a Story Shot feeds them
const AUTO_TITLE = /^Shot \d+ · /;
const EXCERPT = 90;
const TITLE_EXCERPT = 36;
const HISTORY_ITEMS = 64;

const STYLE = `
.storymem-panel { box-sizing: border-box; overflow: auto; font: 11px sans-serif; color: var(--input-text, #ddd);
  background: var(--comfy-input-bg, #222); border-radius: 6px; padding: 4px; }
.storymem-strip { display: flex; gap: 4px; align-items: flex-start; }
.storymem-strip figure { margin: 0; flex: 0 0 auto; text-align: center; }
.storymem-strip img { height: 64px; display: block; border: 2px solid transparent; border-radius: 3px; }
.storymem-strip figure.storymem-fixed img { border-color: #e6b428; }
.storymem-strip figure.storymem-pinned img { border-color: #4aa3ff; }
.storymem-strip figcaption { white-space: nowrap; opacity: 0.85; }
.storymem-caption { opacity: 0.7; margin-bottom: 3px; }
.storymem-shots { list-style: none; margin: 0; padding: 0; }
.storymem-shots li { padding: 2px 0; border-bottom: 1px solid rgba(128, 128, 128, 0.25); }
.storymem-shots .storymem-tag { display: inline-block; min-width: 30px; font-weight: bold; }
.storymem-error { color: #ff7b7b; }
.storymem-video { overflow: hidden; padding: 0; }
.storymem-video video { width: 100%; height: 100%; object-fit: contain; display: block; }
`;

function viewUrl(entry) {
  const query = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "", type: entry.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

function excerpt(text, length) {
  const words = String(text ?? "").split(/\s+/).filter(Boolean).join(" ");
  if (words.length <= length) return words;
  const cut = words.slice(0, length);
  return `${cut.slice(0, cut.lastIndexOf(" ") > 0 ? cut.lastIndexOf(" ") : length)}...`;
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

// One DOM panel per node and name, added after the node's own widgets and never saved in widgets_values.
function panel(node, name, height, className = "") {
  let found = widget(node, name);
  if (!found) {
    const element = document.createElement("div");
    element.className = `storymem-panel ${className}`;
    found = node.addDOMWidget(name, "storymem", element, { serialize: false, hideOnZoom: false, getMinHeight: () => height, getMaxHeight: () => height * 3 });
    found.serialize = false;
  }
  const size = node.computeSize();
  node.setSize([node.size[0], Math.max(node.size[1], size[1])]); // taller, never wider: neighbours keep their place
  app.graph?.setDirtyCanvas(true, true);
  return found.element;
}

function keyframeTitle(entry) {
  const origin = entry.source === "reference" ? "reference image" : `shot ${entry.shot}, frame ${entry.frame}`;
  const kept = entry.pinned ? " - pinned" : entry.fixed ? " - fixed (always kept)" : "";
  return `keyframe ${entry.index}: ${origin}${kept}`;
}

function showBank(node, keyframes, limits) {
  const element = panel(node, BANK_WIDGET, 132);
  element.replaceChildren();
  const caption = document.createElement("div");
  caption.className = "storymem-caption";
  caption.textContent = limits
    ? `memory: ${limits.size} / ${limits.max_size} keyframes, first ${limits.fixed} fixed`
    : `memory: ${keyframes.length} keyframes`;
  const strip = document.createElement("div");
  strip.className = "storymem-strip";
  for (const entry of keyframes) {
    const figure = document.createElement("figure");
    figure.className = entry.pinned ? "storymem-pinned" : entry.fixed ? "storymem-fixed" : ""; // not "fixed": a Tailwind class of the frontend
    figure.title = keyframeTitle(entry);
    const image = document.createElement("img");
    image.src = viewUrl(entry);
    const label = document.createElement("figcaption");
    label.textContent = entry.source === "reference" ? `${entry.index}: ref` : `${entry.index}: shot ${entry.shot}`;
    figure.append(image, label);
    strip.append(figure);
  }
  element.append(caption, strip);
}

// The shot plays under its node, looping and muted, as video packs show their clips; a film (in the output folder)
// with controls.
function showVideo(node, entry) {
  const element = panel(node, VIDEO_WIDGET, 150, "storymem-video");
  const url = viewUrl(entry);
  let video = element.querySelector("video");
  if (video?.dataset.url === url) return;
  video = document.createElement("video");
  Object.assign(video, { autoplay: true, loop: true, muted: true, playsInline: true, controls: entry.type === "output", src: url });
  video.dataset.url = url;
  element.replaceChildren(video);
}

// The shots of a script, read in the browser while the user types (the server validates on queueing).
function shotsFromScript(text) {
  const story = JSON.parse(text);
  const shots = [];
  for (const scene of story.scenes ?? []) {
    (scene.video_prompts ?? []).forEach((prompt, k) => {
      const cut = scene.cut?.[k];
      shots.push({ number: shots.length + 1, scene: scene.scene_num, cut: cut === true || String(cut).toLowerCase() === "true", prompt });
    });
  }
  return shots;
}

function showShots(node, shots, error) {
  node.storymemShots = error ? undefined : shots;
  const element = panel(node, SHOTS_WIDGET, 150);
  element.replaceChildren();
  if (error) {
    const message = document.createElement("div");
    message.className = "storymem-error";
    message.textContent = error;
    element.append(message);
    return;
  }
  const caption = document.createElement("div");
  caption.className = "storymem-caption";
  caption.textContent = `${shots.length} shots (cut: memory only; cont: continues the previous shot)`;
  const list = document.createElement("ol");
  list.className = "storymem-shots";
  for (const shot of shots) {
    const item = document.createElement("li");
    const tag = document.createElement("span");
    tag.className = "storymem-tag";
    tag.textContent = `${shot.number}`;
    item.append(tag, `scene ${shot.scene} ${shot.cut ? "cut " : "cont"}  ${excerpt(shot.prompt, EXCERPT)}`);
    item.title = String(shot.prompt);
    list.append(item);
  }
  element.append(caption, list);
}

function refreshFromScript(node) {
  const file = widget(node, "script_file");
  const script = widget(node, "script");
  if (!script || (file && !String(file.value).startsWith("("))) return; // a file is chosen: the list comes after queueing
  try {
    showShots(node, shotsFromScript(script.value));
  } catch (error) {
    showShots(node, [], `script is not valid JSON yet: ${error.message}`);
  }
  refreshTitles();
}

// ------------------------------------------------------------------ shot titles

function origin(node, inputName) {
  const input = node.inputs?.find((slot) => slot.name === inputName);
  const link = input?.link != null ? app.graph?.links?.get?.(input.link) ?? app.graph?.links?.[input.link] : null;
  return link ? app.graph.getNodeById(link.origin_id) : null;
}

// What a shot node will make, read from the graph: its number, prompt and cut from the Story Shot feeding it
// (and the script behind that), or from its own widgets; after a run, what it made.
function shotFacts(node) {
  const made = node.storymemShot;
  const storyShot = [origin(node, "prompt"), origin(node, "cut"), origin(node, "shot_number")].find((n) => n?.type === STORY_SHOT_NODE);
  let number = made?.number;
  let scripted;
  if (storyShot) {
    number = Number(widget(storyShot, "shot_number")?.value);
    scripted = origin(storyShot, "story")?.storymemShots?.[number - 1];
  }
  const linked = (name) => origin(node, name) != null;
  const prompt = linked("prompt") ? scripted?.prompt ?? made?.prompt : widget(node, "prompt")?.value;
  const cut = linked("cut") ? scripted?.cut ?? made?.cut : widget(node, "cut")?.value;
  let mode = "T2V";
  if (node.type !== FIRST_SHOT_NODE) {
    const chosen = String(widget(node, "mode")?.value ?? "auto-mi2v");
    mode = chosen.startsWith("auto-") ? (cut === false ? chosen.slice(5) : cut === true ? "m2v" : chosen) : chosen;
    mode = mode.toUpperCase();
  }
  return { number, prompt, cut: node.type === FIRST_SHOT_NODE ? undefined : cut, mode };
}

function shotTitle(facts) {
  const parts = [`Shot ${facts.number ?? "?"}`];
  if (facts.cut !== undefined) parts.push(facts.cut ? "cut" : "continues");
  parts.push(facts.mode);
  if (facts.prompt) parts.push(excerpt(facts.prompt, TITLE_EXCERPT));
  return parts.join(" · ");
}

// A title the user typed stays; the default name and titles this extension wrote follow the shot.
function refreshTitle(node) {
  const ours = !node.title || node.title === node.constructor.title || AUTO_TITLE.test(node.title) || /^(StoryMem Shot|First Shot)/.test(node.title);
  if (!ours) return;
  const title = shotTitle(shotFacts(node));
  if (title !== node.title) {
    node.title = title;
    app.graph?.setDirtyCanvas(true, true);
  }
}

// A prompt or cut that a Story Shot feeds is a plain socket: no greyed box showing a value that is not used.
function showLinkOnly(node) {
  let changed = false;
  for (const name of LINK_ONLY) {
    const shown = widget(node, name);
    const slot = node.inputs?.find((input) => input.name === name);
    if (!shown || !slot) continue;
    const fed = origin(node, name)?.type === STORY_SHOT_NODE;
    if (Boolean(shown.hidden) === fed) continue;
    shown.hidden = fed;
    if (fed) delete slot.widget;
    else slot.widget = { name };
    changed = true;
  }
  if (changed) {
    const size = node.computeSize();
    node.setSize([node.size[0], Math.max(node.size[1], size[1])]);
  }
}

function refreshTitles() {
  for (const node of app.graph?.nodes ?? []) {
    if (SHOT_NODES.includes(node.type)) {
      showLinkOnly(node);
      refreshTitle(node);
    }
  }
}

// ------------------------------------------------------------------ stored outputs

function showOutputs(node, output) {
  if (!node || !output) return;
  if (output.storymem_bank) showBank(node, output.storymem_bank, output.storymem_bank_limits?.[0]);
  if (output.storymem_shots) showShots(node, output.storymem_shots);
  if (output.storymem_video?.length) showVideo(node, output.storymem_video[0]);
  if (output.storymem_shot?.length) node.storymemShot = output.storymem_shot[0];
  if (output.storymem_shots || output.storymem_shot) refreshTitles();
}

function isDrawn(node) {
  return [BANK_WIDGET, SHOTS_WIDGET, VIDEO_WIDGET].some((name) => widget(node, name));
}

function showStoredOutputs(outputs) {
  for (const [id, output] of Object.entries(outputs ?? {})) {
    if (!String(id).includes(":")) showOutputs(app.graph?.getNodeById(Number(id)), output); // root-graph nodes only
  }
}

// Whether `run` (an entry of the server's history) computed node `id` from what the graph asks for now: the
// node and all its ancestors queued with the same inputs (what ComfyUI's cache compares).
function sameAsQueued(run, prompt, id, seen = new Set()) {
  if (seen.has(id)) return true;
  seen.add(id);
  const now = prompt[id];
  const then = run.prompt?.[2]?.[id];
  if (!now || !then || now.class_type !== then.class_type || JSON.stringify(now.inputs) !== JSON.stringify(then.inputs)) return false;
  return Object.values(now.inputs).every((value) => !Array.isArray(value) || sameAsQueued(run, prompt, String(value[0]), seen));
}

// After a page reload the frontend starts with no node outputs, and a re-queue served from the cache reports
// only the output nodes: take each node's outputs from the newest run in the server's history that made them
// from the same inputs. The thumbnails they name stay in the temp folder while the server runs.
async function showOutputsFromHistory() {
  const graph = app.graph;
  const waiting = () => graph.nodes.filter((node) => node.type.startsWith("StoryMem") && !isDrawn(node));
  if (!graph || !waiting().length) return;
  const response = await api.fetchApi(`/history?max_items=${HISTORY_ITEMS}`);
  if (!response.ok || app.graph !== graph) return;
  const runs = Object.values(await response.json()).filter((run) => run.outputs).sort((a, b) => b.prompt[0] - a.prompt[0]);
  if (!runs.length) return;
  const { output: prompt } = await app.graphToPrompt(graph);
  for (const node of waiting()) {
    const id = String(node.id);
    const run = runs.find((r) => r.outputs[id] && sameAsQueued(r, prompt, id));
    if (run) showOutputs(node, run.outputs[id]);
  }
}

// ------------------------------------------------------------------ registration

function chain(target, method, after) {
  const original = target[method];
  target[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

// Palettes reset every type's link colour; one without a colour for the bank leaves ours in place.
function colourBankLinks() {
  for (const table of [app.canvas?.constructor?.link_type_colors, app.canvas?.default_connection_color_byType]) {
    if (!table) continue;
    let colour = BANK_LINK_COLOUR;
    Object.defineProperty(table, BANK_TYPE, {
      get: () => colour,
      set: (value) => { if (value) colour = value; },
      enumerable: true,
      configurable: true,
    });
  }
}

app.registerExtension({
  name: "StoryMem.MemoryAndStory",
  async setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
    colourBankLinks();
    api.addEventListener("executing", ({ detail }) => {
      if ((detail?.node ?? detail) == null) showOutputsFromHistory(); // the run ended and is in the history
    });
  },
  async afterConfigureGraph() {
    showStoredOutputs(app.nodeOutputs);
    refreshTitles();
    await showOutputsFromHistory();
  },
  onNodeOutputsUpdated(outputs) {
    showStoredOutputs(outputs);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const ours = (nodeData.output ?? []).includes(BANK_TYPE) || nodeData.name.startsWith("StoryMem");
    if (ours) {
      chain(nodeType.prototype, "onExecuted", function (message) {
        showOutputs(this, message);
      });
    }
    if (SEEDED_NODES.includes(nodeData.name)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        const control = widget(this, "control_after_generate") ?? widget(this, "seed")?.linkedWidgets?.[0];
        if (control) control.value = "fixed"; // a re-queue re-runs nothing; a new seed re-rolls one shot
      });
    }
    if (SHOT_NODES.includes(nodeData.name) || nodeData.name === STORY_SHOT_NODE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        for (const shown of this.widgets ?? []) chain(shown, "callback", () => refreshTitles());
      });
      chain(nodeType.prototype, "onConnectionsChange", () => requestAnimationFrame(refreshTitles));
    }
    if (nodeData.name === STORY_NODE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        const script = widget(this, "script");
        script?.inputEl?.addEventListener("input", () => refreshFromScript(this));
        const file = widget(this, "script_file");
        if (file) chain(file, "callback", () => refreshFromScript(this));
        requestAnimationFrame(() => refreshFromScript(this));
      });
      chain(nodeType.prototype, "onConfigure", function () {
        requestAnimationFrame(() => refreshFromScript(this));
      });
    }
  },
});
