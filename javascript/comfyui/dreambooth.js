// DreamBooth nodes: a live status line and loss chart on the training nodes, and their
// memory plan before they are queued.
// The server sends "dreambooth.status" {node, text, step, total, losses: [[step, loss], ...]}
// while a run goes on (nodes/host.py); ComfyUI's own progress bar and previews come
// through its "progress" messages as usual. The "Plan memory" button posts the node's
// widget values (and its Concept's and Load Training Images' folder) to /dreambooth/plan
// (nodes/plan.py) and shows the planner's answer under the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STATUS_EVENT = "dreambooth.status";
const TRAIN_NODE = /^DreamBoothTrain/;
const CHART_HEIGHT = 48;
const PAD = 8;
const PLAN_ROUTE = "/dreambooth/plan";
const PLAN_LINE = 15;
const GiB = 2 ** 30;

function widgetValues(node) {
  const values = {};
  for (const w of node?.widgets ?? []) {
    if (w.type !== "button" && w.name) values[w.name] = w.value;
  }
  return values;
}

function upstream(node, name) {
  const slot = node?.inputs?.findIndex((input) => input.name === name) ?? -1;
  return slot >= 0 ? node.getInputNode(slot) : null;
}

// What the plan needs from the graph: the node's widgets, its Concept's, and the image folder.
function planRequest(node) {
  const concept = upstream(node, "concept");
  const images = upstream(concept, "images") ?? upstream(node, "dataset");
  const folder = images?.type === "DreamBoothLoadTrainingImages" && !upstream(images, "images")
    ? widgetValues(images).folder || "" : "";
  return { node: node.type, inputs: widgetValues(node), concept: concept ? widgetValues(concept) : {}, folder };
}

// The lines shown under the node: total, cards it fits, what memory=auto chose.
function planLines(plan) {
  const fits = Object.entries(plan.fits).map(([gb, ok]) => `${gb} GB ${ok ? "yes" : "no"}`).join(", ");
  const s = plan.settings;
  const lines = [
    `memory plan: ${(plan.total_bytes / GiB).toFixed(2)} GiB on ${plan.device} (${s.method}, ${s.family}, ${s.resolution} px)`,
    `fits: ${fits}`,
  ];
  lines.push(plan.choices.length ? `memory=auto chose: ${plan.choices.join("; ")}`
    : `settings: ${s.mixed_precision}, checkpointing ${s.gradient_checkpointing}, ${s.optimizer}`);
  return lines;
}

// A message in lines that fit the node's width (an error names folders: it is long).
function wrap(text, width, maxLines = 8) {
  const room = Math.max(30, Math.floor((width - 2 * PAD) / 6.5));
  const lines = [];
  const words = String(text).split(" ").flatMap((w) => w.match(new RegExp(`.{1,${room}}`, "g")) ?? [w]);
  for (const word of words) {
    const last = lines.length - 1;
    if (last >= 0 && (lines[last] + " " + word).length <= room) lines[last] += " " + word;
    else lines.push(word);
  }
  return lines.length > maxLines ? [...lines.slice(0, maxLines - 1), lines[maxLines - 1] + " ..."] : lines;
}

async function showPlan(node) {
  node.dreamboothPlan = { lines: ["planning memory ..."] };
  node.setDirtyCanvas(true, false);
  try {
    const response = await api.fetchApi(PLAN_ROUTE, { method: "POST", body: JSON.stringify(planRequest(node)) });
    const answer = await response.json();
    node.dreamboothPlan = response.ok ? { lines: planLines(answer), plan: answer }
      : { lines: wrap(`plan: ${answer.error ?? response.statusText}`, node.size[0]), error: true };
  } catch (err) {
    node.dreamboothPlan = { lines: wrap(`plan: ${err}`, node.size[0]), error: true };
  }
  node.setDirtyCanvas(true, false);
}

function drawPlan(ctx, node) {
  const plan = node.dreamboothPlan;
  if (!plan || node.flags?.collapsed) return;
  const width = node.size[0];
  const top = node.size[1] + 4;
  ctx.save();
  ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
  ctx.fillRect(0, top, width, plan.lines.length * PLAN_LINE + 8);
  ctx.fillStyle = plan.error ? "#f88" : plan.stale ? "#999" : "#ddd";
  ctx.font = "12px sans-serif";
  plan.lines.forEach((line, i) => ctx.fillText(line.slice(0, 110), PAD, top + 4 + (i + 1) * PLAN_LINE - 3));
  ctx.restore();
}

function drawChart(ctx, losses, x, y, width, height) {
  if (losses.length < 2) return;
  const values = losses.map((p) => p[1]);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const first = losses[0][0];
  const steps = losses[losses.length - 1][0] - first || 1;
  ctx.strokeStyle = "#6a8fd8";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  losses.forEach(([step, loss], i) => {
    const px = x + ((step - first) / steps) * width;
    const py = y + height - ((loss - lo) / span) * height;
    if (i === 0) ctx.moveTo(px, py);
    else ctx.lineTo(px, py);
  });
  ctx.stroke();
}

app.registerExtension({
  name: "dreambooth_core.status",

  setup() {
    api.addEventListener(STATUS_EVENT, ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
      if (!node) return;
      node.dreamboothStatus = detail;
      node.setDirtyCanvas(true, false);
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TRAIN_NODE.test(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      // not a value: kept out of the queued prompt and the saved workflow
      const button = this.addWidget("button", "Plan memory", null, () => showPlan(this), { serialize: false });
      if (button) button.serialize = false;
      return result;
    };
    const onWidgetChanged = nodeType.prototype.onWidgetChanged;
    nodeType.prototype.onWidgetChanged = function () {
      const result = onWidgetChanged?.apply(this, arguments);
      if (this.dreamboothPlan && !this.dreamboothPlan.stale) {   // a shown plan no longer matches the widgets
        this.dreamboothPlan = { ...this.dreamboothPlan, stale: true,
          lines: [...this.dreamboothPlan.lines, "(settings changed: press Plan memory again)"] };
      }
      return result;
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      drawPlan(ctx, this);
      const status = this.dreamboothStatus;
      if (!status || this.flags?.collapsed) return result;
      // Drawn above the title bar, so it never hides a widget.
      const title = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
      const top = -title - CHART_HEIGHT - 22;
      const width = this.size[0];
      ctx.save();
      ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
      ctx.fillRect(0, top, width, CHART_HEIGHT + 18);
      drawChart(ctx, status.losses || [], PAD, top + 20, width - 2 * PAD, CHART_HEIGHT - 6);
      ctx.fillStyle = "#ddd";
      ctx.font = "12px sans-serif";
      ctx.fillText(String(status.text || "").slice(0, 90), PAD, top + 14);
      ctx.restore();
      return result;
    };
  },
});
