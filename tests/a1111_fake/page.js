// Runs javascript/dreambooth_core.js against a minimal stand-in of the WebUI page (node, no
// browser): a clock the test moves, the tab's elements, and window.confirm. Prints one JSON
// line per step so tests/test_a1111_page_script.py can check when the poll button is clicked
// and whether a declined Cancel reaches gradio.
"use strict";
const fs = require("fs");
const vm = require("vm");

function element(id, tag) {
    return {id: id, tagName: tag || "DIV", visible: true, clicks: 0, children: [], attrs: {},
            get offsetParent() { return this.visible ? {} : null; },
            click() { this.clicks += 1; },
            querySelector(sel) { return this.children.find(c => sel === "button" ? c.tagName === "BUTTON" : sel in c.attrs) || null; },
            getAttribute(name) { return this.attrs[name]; }};
}

const tab = element("tab_dreambooth_core");
const poll = element("dbc_poll", "BUTTON");
const cancel = element("dbc_cancel", "BUTTON");
const marker = element("marker");
marker.attrs["[data-dbc-active]"] = true;
marker.attrs["data-dbc-active"] = "0";
const status = element("dbc_status");
status.children.push(marker);
const byId = {tab_dreambooth_core: tab, dbc_poll: poll, dbc_cancel: cancel, dbc_status: status};

let now = 0;
let tick = null;
let clickListener = null;
let answer = true;
const context = {
    Date: {now: () => now},
    setInterval: (fn) => { tick = fn; },
    window: {confirm: () => answer},
    document: {querySelector: (sel) => byId[sel.slice(1)] || null,
               addEventListener: (type, fn, capture) => { if (type === "click" && capture) clickListener = fn; }},
};
vm.createContext(context);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), context);

function advance(ms) {
    for (let t = 0; t < ms; t += 500) { now += 500; tick(); }
}

function clickCancel() {
    const event = {stopped: false, prevented: false, composedPath: () => [cancel, status, tab],
                   stopImmediatePropagation() { this.stopped = true; }, preventDefault() { this.prevented = true; }};
    clickListener(event);
    return event.stopped && event.prevented;
}

const out = {};
advance(10000); out.idle_polls_in_10s = poll.clicks;
marker.attrs["data-dbc-active"] = "1"; poll.clicks = 0;
advance(6000); out.active_polls_in_6s = poll.clicks;
tab.visible = false; poll.clicks = 0;
advance(6000); out.hidden_tab_polls = poll.clicks;
answer = false; out.declined_cancel_blocked = clickCancel();
answer = true; out.confirmed_cancel_blocked = clickCancel();
console.log(JSON.stringify(out));
