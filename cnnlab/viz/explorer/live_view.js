// cnnlab live view: while `cnnlab train` runs, poll RUN/live.js and redraw the learning
// curves, the filters and the feature maps of a fixed image in place. The page is never
// reloaded, so the reader's scroll position and clicks in the explorer stay as they were.
// live.js is loaded with a <script> tag, which browsers allow from a file:// page (fetch is
// refused there); `cnnlab explore RUN --serve` serves the same files over http.
"use strict";

(function () {
  var node = document.getElementById("cnnlab-live");
  if (!node) return;
  var src = node.getAttribute("data-src"), every = Number(node.getAttribute("data-every-ms")) || 2000;
  var finished = node.getAttribute("data-finished") === "true";
  var generated = Number(node.getAttribute("data-generated")) || 0;
  var status = node.querySelector(".lv-status"), reason = node.querySelector(".lv-reason");
  var body = node.querySelector(".lv-body");
  var shown = null, canvases = {};

  function decode(base64) {
    var text = atob(base64), out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function slot(key, make) {
    if (!canvases[key]) canvases[key] = make();
    return canvases[key];
  }
  function section(key, title) {
    return slot("section:" + key, function () {
      var box = document.createElement("div"), heading = document.createElement("h3");
      heading.textContent = title;
      box.appendChild(heading);
      var row = document.createElement("div");
      row.className = "lv-maps";
      box.appendChild(row);
      body.appendChild(box);
      return row;
    });
  }
  // channel planes (uint8 over each channel's lo..hi) as small gray canvases
  function drawPlanes(key, title, entry, signed) {
    var row = section(key, title), shape = entry.shape, bytes = decode(entry.data);
    var C = shape[0], H = shape[1], W = shape[2];
    for (var c = 0; c < C; c++) {
      var canvas = slot(key + ":" + c, function () {
        var made = document.createElement("canvas");
        made.width = W; made.height = H;
        row.appendChild(made);
        return made;
      });
      var ctx = canvas.getContext("2d"), image = ctx.createImageData(W, H);
      for (var p = 0; p < H * W; p++) {
        var v = bytes[c * H * W + p];
        image.data[4 * p] = image.data[4 * p + 1] = image.data[4 * p + 2] = v;
        image.data[4 * p + 3] = 255;
      }
      ctx.putImageData(image, 0, 0);
      canvas.title = title + ", channel " + c + ": " + entry.lo[c].toPrecision(3) + " (black) to " + entry.hi[c].toPrecision(3) + " (white)";
    }
  }
  function drawCurves(state) {
    var canvas = slot("curves", function () {
      var made = document.createElement("canvas");
      made.width = 560; made.height = 220;
      made.className = "lv-curves";
      var box = document.createElement("div");
      var heading = document.createElement("h3");
      heading.textContent = "Learning curves: training loss per logged step (blue), test loss (orange) and accuracy (green) per epoch";
      box.appendChild(heading); box.appendChild(made);
      body.insertBefore(box, body.firstChild);
      return made;
    });
    var ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 30;
    ctx.clearRect(0, 0, W, H);
    var steps = state.steps, epochs = state.epoch_records, maxStep = 1, maxLoss = 0;
    steps.forEach(function (s) { maxStep = Math.max(maxStep, s[0]); if (s[1] !== null) maxLoss = Math.max(maxLoss, s[1]); });
    epochs.forEach(function (e) { maxStep = Math.max(maxStep, e.step); maxLoss = Math.max(maxLoss, e.test_loss || 0); });
    maxLoss = maxLoss || 1;
    var X = function (s) { return pad + (W - 2 * pad) * s / maxStep; };
    var Y = function (v, top) { return H - pad - (H - 2 * pad) * v / top; };
    ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(pad, pad); ctx.lineTo(pad, H - pad); ctx.lineTo(W - pad, H - pad); ctx.stroke();
    ctx.fillStyle = "#333"; ctx.font = "11px sans-serif";
    ctx.fillText("loss " + maxLoss.toPrecision(3), 2, pad - 8);
    ctx.fillText("step " + maxStep, W - pad - 40, H - 8);
    ctx.fillStyle = "#2ca02c";
    ctx.fillText("accuracy 1", W - pad - 50, pad - 8);
    ctx.strokeStyle = "#1f77b4"; ctx.beginPath();
    steps.forEach(function (s, n) { if (s[1] === null) return; if (n) ctx.lineTo(X(s[0]), Y(s[1], maxLoss)); else ctx.moveTo(X(s[0]), Y(s[1], maxLoss)); });
    ctx.stroke();
    epochs.forEach(function (e) {
      ctx.fillStyle = "#ff7f0e"; ctx.beginPath(); ctx.arc(X(e.step), Y(e.test_loss, maxLoss), 3, 0, 7); ctx.fill();
      ctx.fillStyle = "#2ca02c"; ctx.beginPath(); ctx.arc(X(e.step), Y(e.test_accuracy, 1), 3, 0, 7); ctx.fill();
    });
  }
  // The headline: how far the run is, or how it ended and why.
  var HEADS = {running: "training", finished: "finished", interrupted: "interrupted", failed: "failed"};
  function describe(state) {
    var last = state.epoch_records[state.epoch_records.length - 1];
    return (HEADS[state.status] || state.status) + ": epoch " + state.epoch + (state.epochs ? " of " + state.epochs : "") +
      " done, step " + state.step +
      (last && typeof last.test_accuracy === "number" ? ", test accuracy " + last.test_accuracy.toFixed(4) : "") +
      " (updated " + new Date(state.time * 1000).toLocaleTimeString() + ")";
  }
  function render(state) {
    if (shown && shown.time === state.time) return;
    shown = state;
    changedAt = Date.now();
    status.textContent = describe(state);
    reason.textContent = state.reason || "";
    reason.hidden = !state.reason;
    node.setAttribute("data-status", state.status);
    node.setAttribute("data-step", state.step);
    node.setAttribute("data-epoch", state.epoch);
    drawCurves(state);
    (state.filters || []).forEach(function (entry) {
      drawPlanes("filters" + entry.layer, "Filters of layer " + entry.layer + (entry.shape.length === 3 && entry.layer > 0 ? " (mean over input channels)" : ""), entry);
    });
    if (state.image) {
      var shape = state.image.shape, colour = shape.length === 3 && shape[0] === 3;
      drawPlanes("image", "The fixed test image" + (colour ? " (its R, G and B channels)" : ""),
                 {shape: colour ? shape : [1].concat(shape.slice(-2)), data: state.image.data, lo: [0, 0, 0], hi: [255, 255, 255]});
    }
    (state.maps || []).forEach(function (entry) {
      drawPlanes("maps" + entry.layer, "Feature maps after layer " + entry.layer + " (" + entry.title + ")", entry);
    });
    // A finished run is final; an interrupted or failed one may be resumed: keep looking.
    finished = state.status === "finished";
    if (finished && generated && state.time > generated) node.querySelector(".lv-reload").hidden = false;
  }

  // A trainer that was killed (SIGKILL, out of memory, a closed laptop) writes nothing more:
  // after STALE_MS without a new state of a running run, the headline says so.
  var STALE_MS = Number(node.getAttribute("data-stale-ms")) || 60000, changedAt = Date.now();
  function checkStale() {
    if (!shown || shown.status !== "running") return;
    var quiet = Date.now() - changedAt;
    node.setAttribute("data-stale", quiet > STALE_MS ? "true" : "false");
    status.textContent = describe(shown) + (quiet > STALE_MS ? "; no news from the trainer for " +
      Math.round(quiet / 1000) + " s: it may have been stopped without a word (killed, out of memory)" : "");
  }

  window.cnnlabLive = render;
  function poll() {
    var script = document.createElement("script");
    script.src = src + "?t=" + Date.now();
    script.onload = script.onerror = function () {
      script.parentNode.removeChild(script);
      checkStale();
      if (!finished) setTimeout(poll, every);
    };
    document.head.appendChild(script);
  }
  var reload = node.querySelector(".lv-reload");
  if (reload) {
    reload.addEventListener("click", function (event) {
      event.preventDefault();
      sessionStorage.setItem("cnnlab-scroll", String(window.scrollY));
      location.reload();
    });
  }
  var scroll = sessionStorage.getItem("cnnlab-scroll");
  if (scroll !== null) {
    sessionStorage.removeItem("cnnlab-scroll");
    window.addEventListener("load", function () { window.scrollTo(0, Number(scroll)); });
  }
  poll();
})();
