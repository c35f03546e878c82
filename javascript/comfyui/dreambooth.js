// DreamBooth nodes: a live status line and loss chart on the training nodes.
// The server sends "dreambooth.status" {node, text, step, total, losses: [[step, loss], ...]}
// while a run goes on (nodes/host.py); ComfyUI's own progress bar and previews come
// through its "progress" messages as usual.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const STATUS_EVENT = "dreambooth.status";
const TRAIN_NODE = /^DreamBoothTrain/;
const CHART_HEIGHT = 48;
const PAD = 8;

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
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
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
