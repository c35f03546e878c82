// DreamBooth tab (dreambooth_core): live updates and a confirmation before Cancel.
//
// Live updates need no gradio timer, so they work the same in gradio 3.41 (A1111) and
// 4.x (Forge): while the tab is visible, this clicks the hidden "poll" button (#dbc_poll)
// every 1.5 s when the status says a run is active (data-dbc-active="1"), and every 10 s
// otherwise, so a run started elsewhere (the HTTP API, another browser) shows up too.
(function () {
    "use strict";
    var ACTIVE_MS = 1500;
    var IDLE_MS = 10000;
    var lastPoll = 0;

    function root() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function byId(id) {
        return root().querySelector("#" + id);
    }

    function button(id) {
        var el = byId(id);
        if (!el) return null;
        return el.tagName === "BUTTON" ? el : el.querySelector("button");
    }

    function tabVisible() {
        var tab = byId("tab_dreambooth_core");
        return !!tab && tab.offsetParent !== null;
    }

    function runActive() {
        var status = byId("dbc_status");
        var marker = status && status.querySelector("[data-dbc-active]");
        return !!marker && marker.getAttribute("data-dbc-active") === "1";
    }

    setInterval(function () {
        if (!tabVisible()) return;
        var now = Date.now();
        if (now - lastPoll < (runActive() ? ACTIVE_MS : IDLE_MS)) return;
        var poll = button("dbc_poll");
        if (!poll) return;
        lastPoll = now;
        poll.click();
    }, 500);

    // Capture phase: runs before gradio's own handler, which never sees a declined click.
    document.addEventListener("click", function (event) {
        var cancel = button("dbc_cancel");
        if (!cancel || event.composedPath().indexOf(cancel) < 0) return;
        if (!window.confirm("Cancel the training run? It stops after saving a state that Resume continues.")) {
            event.stopImmediatePropagation();
            event.preventDefault();
        }
    }, true);
})();
