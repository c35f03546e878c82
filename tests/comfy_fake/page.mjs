// javascript/comfyui/dreambooth.js on a stand-in ComfyUI front end (run by node).
// argv: the extension file, a JSON file with the graph to build, and optionally a JSON file with
// what POST /dreambooth/plan answers ({status, body}). Prints {request, lines, stale_lines}: the
// body the Plan memory button sent, the lines drawn under the node, the lines after a widget changed,
// and whether the button would be saved into the prompt/workflow.
// Front-end facts modelled: extensions import `app` from ../../scripts/app.js and `api` from
// ../../scripts/api.js; `api.fetchApi(route, options)` returns a fetch Response; node types get
// `beforeRegisterNodeDef(nodeType, nodeData)`, then nodes are created (`onNodeCreated`), have
// `widgets` [{name, type, value}], `inputs` [{name}], `getInputNode(slot)`, `addWidget`, `size`,
// `onWidgetChanged`, and are drawn with `onDrawForeground(ctx)`.
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { pathToFileURL } from "node:url";

const [source, graphFile, answerFile] = process.argv.slice(2);
const graph = JSON.parse(readFileSync(graphFile, "utf8"));
const answer = answerFile ? JSON.parse(readFileSync(answerFile, "utf8")) : { status: 200, body: {} };

const sent = [];
globalThis.__fakeComfy = {
  app: { extensions: [], registerExtension(ext) { this.extensions.push(ext); }, graph: null },
  api: {
    addEventListener() {},
    async fetchApi(route, options) {
      sent.push({ route, method: options.method, body: JSON.parse(options.body) });
      return { ok: answer.status < 400, status: answer.status, statusText: "", json: async () => answer.body };
    },
  },
};
const text = readFileSync(source, "utf8")
  .replace('import { app } from "../../scripts/app.js";', "const { app } = globalThis.__fakeComfy;")
  .replace('import { api } from "../../scripts/api.js";', "const { api } = globalThis.__fakeComfy;");
const file = join(mkdtempSync(join(tmpdir(), "dbc-page-")), "ext.mjs");
writeFileSync(file, text);
await import(pathToFileURL(file).href);
const ext = globalThis.__fakeComfy.app.extensions[0];

// graph: {nodes: {id: {type, widgets: {name: value}, inputs: {name: source id}}}, train: id}
const nodes = {};
for (const [id, spec] of Object.entries(graph.nodes)) {
  const nodeType = function () {};
  await ext.beforeRegisterNodeDef?.(nodeType, { name: spec.type });
  const node = new nodeType();
  Object.assign(node, {
    id, type: spec.type, size: [300, 200], flags: {},
    widgets: Object.entries(spec.widgets).map(([name, value]) => ({ name, type: typeof value === "number" ? "number" : "text", value })),
    inputs: Object.keys(spec.inputs ?? {}).map((name) => ({ name })),
    addWidget(type, name, value, callback, options = {}) {
      const widget = { type, name, value, callback, options };
      this.widgets.push(widget);
      return widget;
    },
    getInputNode(slot) { return nodes[spec.inputs[this.inputs[slot].name]] ?? null; },
    setDirtyCanvas() {},
  });
  node.onNodeCreated?.();
  nodes[id] = node;
}
const train = nodes[graph.train];
const drawn = () => {
  const lines = [];
  const ctx = { save() {}, restore() {}, fillRect() {}, beginPath() {}, moveTo() {}, lineTo() {}, stroke() {},
    fillText(t) { lines.push(t); } };
  train.onDrawForeground(ctx);
  return lines;
};
const button = train.widgets.find((w) => w.type === "button" && w.name === "Plan memory");
await button.callback();
const lines = drawn();
train.onWidgetChanged?.("steps", 5, 0, train.widgets[0]);
// graphToPrompt and the saved workflow skip a widget with options.serialize / serialize false
const buttonSaved = button.options?.serialize !== false && button.serialize !== false;
console.log(JSON.stringify({ request: sent[0], lines, stale_lines: drawn(), button_saved: buttonSaved }));
