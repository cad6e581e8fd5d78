// StoryMem frontend: the memory bank as a strip of thumbnails under every node that outputs one, and
// the shot list of a story under the Story Script node. Served by ComfyUI from the pack's WEB_DIRECTORY.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const BANK_TYPE = "STORYMEM_BANK";
const BANK_WIDGET = "storymem_memory";
const SHOTS_WIDGET = "storymem_shot_list";
const STORY_NODE = "StoryMemStoryScript";
const EXCERPT = 90;

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
`;

function viewUrl(entry) {
  const query = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder ?? "", type: entry.type ?? "temp" });
  return api.apiURL(`/view?${query}`);
}

// One DOM panel per node and name, added after the node's own widgets and never saved in widgets_values.
function panel(node, name, height) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const element = document.createElement("div");
    element.className = "storymem-panel";
    widget = node.addDOMWidget(name, "storymem", element, { serialize: false, hideOnZoom: false, getMinHeight: () => height, getMaxHeight: () => height * 3 });
    widget.serialize = false;
  }
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  app.graph?.setDirtyCanvas(true, true);
  return widget.element;
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
    const prompt = String(shot.prompt);
    item.append(tag, `scene ${shot.scene} ${shot.cut ? "cut " : "cont"}  ${prompt.length > EXCERPT ? prompt.slice(0, EXCERPT - 3) + "..." : prompt}`);
    item.title = prompt;
    list.append(item);
  }
  element.append(caption, list);
}

function refreshFromScript(node) {
  const file = node.widgets?.find((w) => w.name === "script_file");
  const script = node.widgets?.find((w) => w.name === "script");
  if (!script || (file && !String(file.value).startsWith("("))) return; // a file is chosen: the list comes after queueing
  try {
    showShots(node, shotsFromScript(script.value));
  } catch (error) {
    showShots(node, [], `script is not valid JSON yet: ${error.message}`);
  }
}

function chain(prototype, method, after) {
  const original = prototype[method];
  prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

app.registerExtension({
  name: "StoryMem.MemoryAndStory",
  async setup() {
    const style = document.createElement("style");
    style.textContent = STYLE;
    document.head.append(style);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if ((nodeData.output ?? []).includes(BANK_TYPE) || nodeData.name === "StoryMemPreviewBank") {
      chain(nodeType.prototype, "onExecuted", function (message) {
        if (message?.storymem_bank) showBank(this, message.storymem_bank, message.storymem_bank_limits?.[0]);
      });
    }
    if (nodeData.name === STORY_NODE) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        const script = this.widgets?.find((w) => w.name === "script");
        script?.inputEl?.addEventListener("input", () => refreshFromScript(this));
        const file = this.widgets?.find((w) => w.name === "script_file");
        if (file) chain(file, "callback", () => refreshFromScript(this));
        requestAnimationFrame(() => refreshFromScript(this));
      });
      chain(nodeType.prototype, "onConfigure", function () {
        requestAnimationFrame(() => refreshFromScript(this));
      });
      chain(nodeType.prototype, "onExecuted", function (message) {
        if (message?.storymem_shots) showShots(this, message.storymem_shots);
      });
    }
  },
});
