// cnnlab explorer: the page. Pick an image, see every layer's feature maps, click a pixel
// and read what the layer computed there, forward and backward (engine.js does the math).
"use strict";

(function () {
  var E = CnnlabEngine;
  var root = document.getElementById("cnnlab-explorer");
  var source = document.getElementById("cnnlab-explorer-data");
  if (!root || !source) return;
  var data = JSON.parse(source.textContent);
  var layers = E.prepare(data.layers);
  var MAP_PX = 56, BIG_PX = 196, TOP_INPUTS = 12;
  var state = {item: null, values: null, backward: null, target: null, selection: null};

  // ------------------------------------------------------------------ small helpers

  function el(tag, attributes, children) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (key) {
      if (key === "text") node.textContent = attributes[key];
      else if (key === "html") node.innerHTML = attributes[key];
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), attributes[key]);
      else node.setAttribute(key, attributes[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  // A number as shown (5 significant digits) with its exact value in data-v and the tooltip.
  function short(v) {
    if (v === 0) return "0";
    if (!isFinite(v)) return String(v);
    var a = Math.abs(v);
    if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(5)));
    return v.toExponential(4);
  }
  function num(v, role, extra) {
    var attributes = {"class": "cx-num" + (v < 0 ? " cx-neg" : ""), "data-v": String(v), title: String(v), text: short(v)};
    if (role) attributes["data-role"] = role;
    Object.keys(extra || {}).forEach(function (key) { attributes[key] = extra[key]; });
    return el("span", attributes);
  }
  function row(label, value, role) {
    return el("tr", {}, [el("th", {text: label}), el("td", {}, [typeof value === "number" ? num(value, role) : value])]);
  }
  function matrix(values, rows, cols, role, marks) {
    var table = el("table", {"class": "cx-mat", "data-role": role});
    for (var r = 0; r < rows; r++) {
      var tr = el("tr");
      for (var c = 0; c < cols; c++) {
        var t = r * cols + c, v = values[t], td = el("td", {"data-t": t});
        if (marks && marks[t]) td.className = marks[t];
        td.appendChild(v === null ? el("span", {"class": "cx-pad", text: "pad"}) : num(v));
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    return table;
  }
  function className(k) { return data.classes[k] !== undefined ? data.classes[k] : String(k); }
  function isMap(shape) { return shape.length === 3; }
  function at(tensor, c, i, j) { return tensor.data[(c * tensor.shape[1] + i) * tensor.shape[2] + j]; }

  // ------------------------------------------------------------------ drawing maps

  // One channel as an image: non-negative maps in gray (0 black, the channel's max white),
  // signed maps in blue (negative) and red (positive), scaled to the channel's largest |v|;
  // the network's input (tensor state.values[0]) in gray from its min to its max.
  function drawChannel(canvas, tensor, c, box, mark, contributions) {
    var H = tensor.shape[1], W = tensor.shape[2], ctx = canvas.getContext("2d");
    canvas.width = W; canvas.height = H;
    var plane = tensor.data.subarray ? tensor.data.subarray(c * H * W, (c + 1) * H * W) : tensor.data.slice(c * H * W, (c + 1) * H * W);
    var lo = Infinity, hi = -Infinity, p;
    for (p = 0; p < plane.length; p++) { lo = Math.min(lo, plane[p]); hi = Math.max(hi, plane[p]); }
    var input = state.values && tensor === state.values[0];
    var signed = tensor.signed !== undefined ? tensor.signed : lo < 0 && !input, scale = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    var offset = input ? lo : 0;
    if (input) scale = hi - lo || 1;
    var image = ctx.createImageData(W, H);
    for (p = 0; p < plane.length; p++) {
      var v = (plane[p] - offset) / scale, q = 4 * p;
      if (signed) {
        var a = Math.min(1, Math.abs(v));
        image.data[q] = v > 0 ? 255 : Math.round(255 * (1 - a));
        image.data[q + 1] = Math.round(255 * (1 - a));
        image.data[q + 2] = v < 0 ? 255 : Math.round(255 * (1 - a));
      } else {
        image.data[q] = image.data[q + 1] = image.data[q + 2] = Math.round(255 * Math.max(0, v));
      }
      image.data[q + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
    if (box) outline(ctx, box, "#ffb000");
    if (mark) outline(ctx, [mark[0], mark[0], mark[1], mark[1]], "#00d000");
    (contributions || []).forEach(function (m) {
      outline(ctx, [m.row, m.row, m.col, m.col], m.positive ? "#e00000" : "#0050ff");
    });
  }
  function outline(ctx, box, colour) {
    ctx.strokeStyle = colour; ctx.lineWidth = Math.max(0.3, ctx.canvas.width / 60);
    var inset = ctx.lineWidth / 2;
    ctx.strokeRect(box[2] + inset, box[0] + inset, box[3] - box[2] + 1 - 2 * inset, box[1] - box[0] + 1 - 2 * inset);
  }
  function mapCanvas(px, onclick) {
    var canvas = el("canvas", {"class": "cx-map"});
    canvas.style.width = canvas.style.height = px + "px";
    if (onclick) {
      canvas.addEventListener("click", function (event) {
        var rect = canvas.getBoundingClientRect();
        var i = Math.floor((event.clientY - rect.top) / rect.height * canvas.height);
        var j = Math.floor((event.clientX - rect.left) / rect.width * canvas.width);
        onclick(Math.min(Math.max(i, 0), canvas.height - 1), Math.min(Math.max(j, 0), canvas.width - 1));
      });
    }
    return canvas;
  }

  // ------------------------------------------------------------------ the image and its pass

  function decodeItem(item) {
    if (item.decoded) return item.decoded;
    var anchors = {};
    Object.keys(item.inputs || {}).forEach(function (k) { anchors[k] = E.float32(item.inputs[k]); });
    item.decoded = {pixels: typeof item.pixels === "string" ? E.bytes(item.pixels) : item.pixels,
                    anchors: item.inputs ? anchors : null,
                    logits: item.logits ? E.float32(item.logits) : null};
    return item.decoded;
  }

  function selectItem(item) {
    var decoded = decodeItem(item);
    var x = {shape: data.input_shape.slice(), data: E.normalize(decoded.pixels, item.normalization || data.normalization)};
    state.item = item;
    state.values = E.forward(layers, x, decoded.anchors);
    markSigned(state.values);
    var logits = state.values[layers.length].data;
    state.predicted = argmax(logits);
    state.target = item.label >= 0 ? item.label : state.predicted;
    state.backward = E.backward(layers, state.values, state.target);
    renderPicker(); renderPrediction(); renderLayers();
    if (state.selection) select(state.selection);
    else {
      var first = firstConv();
      if (first >= 0) {
        var shape = state.values[first + 1].shape;
        select({layer: first, channel: 0, i: shape[1] >> 1, j: shape[2] >> 1});
      } else select({layer: layers.length - 1, unit: state.predicted});
    }
  }
  // Maps that take either sign are drawn blue-white-red whatever this image gives them; a
  // ReLU's output (and a pool of it) in gray.
  var SIGNED = {conv: true, linear: true, batchnorm: true, tanh: true, leaky_relu: true};
  function markSigned(values) {
    for (var k = 0; k < layers.length; k++) {
      var kind = layers[k].kind, passes = kind === "maxpool" || kind === "avgpool" || kind === "dropout" || kind === "flatten";
      values[k + 1].signed = SIGNED[kind] === true || (passes && values[k].signed === true);
    }
    values[0].signed = false;
  }
  function argmax(values) {
    var best = 0;
    for (var i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
  }
  function firstConv() {
    for (var k = 0; k < layers.length; k++) if (layers[k].kind === "conv") return k;
    return -1;
  }
  function setTarget(k) {
    state.target = k;
    state.backward = E.backward(layers, state.values, k);
    renderPrediction();
    if (state.selection) select(state.selection);
  }

  // ------------------------------------------------------------------ layout

  var picker = el("div", {"class": "cx-picker"});
  var prediction = el("div", {"class": "cx-prediction"});
  var layerList = el("div", {"class": "cx-layers"});
  var panel = el("div", {"class": "cx-panel", id: "cx-panel"});
  var note = el("p", {"class": "cx-note"});
  var upload = el("input", {type: "file", accept: "image/*", "class": "cx-upload", onchange: onUpload});
  var preparation = data.preparation || {preprocess: {kind: "digit", channels: 1, size: data.input_shape.slice(-2)},
                                         normalization: data.normalization};
  var runKind = preparation.preprocess.kind;
  var prepareSelect = el("select", {"class": "cx-prepare", onchange: onPrepareChange,
                                    title: "how the picture is prepared, as cnnlab predict --prepare"});
  [["digit", "MNIST digit"], ["resize", "resize"], ["none", "as it is"]].forEach(function (option) {
    var node = el("option", {value: option[0], text: option[1] + (option[0] === runKind ? " (as in training)" : "")});
    if (option[0] === runKind) node.selected = true;
    prepareSelect.appendChild(node);
  });
  root.appendChild(el("div", {"class": "cx-top"}, [
    picker,
    el("label", {"class": "cx-upload-label"}, [document.createTextNode("Upload a picture: "), upload]),
    el("label", {"class": "cx-upload-label"}, [document.createTextNode(" prepared: "), prepareSelect]),
    note]));
  root.appendChild(el("div", {"class": "cx-body"}, [el("div", {"class": "cx-left"}, [prediction, layerList]), panel]));

  function renderPicker() {
    picker.innerHTML = "";
    var items = data.images.concat(state.uploads || []);
    items.forEach(function (item) {
      var canvas = el("canvas", {"class": "cx-thumb" + (item === state.item ? " cx-chosen" : ""),
                                 title: item.name + (item.label >= 0 ? " (" + className(item.label) + ")" : "")});
      drawPixels(canvas, decodeItem(item).pixels);
      canvas.addEventListener("click", function () { selectItem(item); });
      picker.appendChild(canvas);
    });
  }
  function drawPixels(canvas, pixels) {
    var shape = data.image_shape, C = shape.length === 3 ? shape[0] : 1;
    var H = shape[shape.length - 2], W = shape[shape.length - 1];
    canvas.width = W; canvas.height = H;
    var ctx = canvas.getContext("2d"), image = ctx.createImageData(W, H);
    for (var p = 0; p < H * W; p++) {
      for (var k = 0; k < 3; k++) image.data[4 * p + k] = pixels[(C === 3 ? k : 0) * H * W + p];
      image.data[4 * p + 3] = 255;
    }
    ctx.putImageData(image, 0, 0);
  }

  function renderPrediction() {
    var logits = state.values[layers.length].data, probabilities = E.softmax(logits).probabilities;
    var order = probabilities.map(function (p, k) { return k; }).sort(function (a, b) { return probabilities[b] - probabilities[a]; });
    prediction.innerHTML = "";
    var item = state.item;
    prediction.appendChild(el("p", {"class": "cx-caption", html: "<b>" + escapeHtml(item.name) + "</b>" +
      (item.label >= 0 ? " &middot; true class <b>" + escapeHtml(className(item.label)) + "</b>" : "") +
      " &middot; predicted <b>" + escapeHtml(className(state.predicted)) + "</b> (" +
      (100 * probabilities[state.predicted]).toFixed(1) + "%)" +
      (item.decoded.anchors ? "" : " &middot; <i>computed in your browser from the model's weights</i>")}));
    var bars = el("div", {"class": "cx-bars"});
    order.slice(0, Math.min(order.length, 10)).forEach(function (k) {
      var bar = el("div", {"class": "cx-bar" + (k === state.target ? " cx-target" : ""), title: "click: how logit " + k + " was computed"}, [
        el("span", {"class": "cx-bar-name", text: className(k)}),
        el("span", {"class": "cx-bar-fill", style: "width:" + (100 * probabilities[k]).toFixed(1) + "%"}),
        el("span", {"class": "cx-bar-value", text: (100 * probabilities[k]).toFixed(1) + "%"})]);
      bar.addEventListener("click", function () { select({layer: layers.length - 1, unit: k}); });
      bars.appendChild(bar);
    });
    prediction.appendChild(bars);
    var chooser = el("select", {"class": "cx-target-select", onchange: function () { setTarget(Number(chooser.value)); }});
    data.classes.forEach(function (name, k) {
      var option = el("option", {value: k, text: k + " " + name});
      if (k === state.target) option.selected = true;
      chooser.appendChild(option);
    });
    prediction.appendChild(el("p", {"class": "cx-caption"}, [
      document.createTextNode("Backward pass for class "), chooser,
      document.createTextNode(": loss L = -log p = " + short(-Math.log(probabilities[state.target])))]));
  }

  function renderLayers() {
    layerList.innerHTML = "";
    state.canvases = [];
    state.overlaid = [];
    var input = state.values[0];
    layerList.appendChild(layerBlock(-1, "Input " + input.shape.join("\u00d7"), input));
    layers.forEach(function (layer, k) {
      layerList.appendChild(layerBlock(k, k + ": " + layer.title + " \u2192 " + state.values[k + 1].shape.join("\u00d7"), state.values[k + 1]));
    });
  }
  function layerBlock(k, title, tensor) {
    var block = el("div", {"class": "cx-layer", "data-layer": k}, [el("h4", {text: title})]);
    var canvases = [];
    if (isMap(tensor.shape)) {
      var grid = el("div", {"class": "cx-grid"});
      if (k < 0 && tensor.shape[0] === 3) {      // a colour input: the picture, then R, G, B
        var picture = mapCanvas(MAP_PX);
        picture.title = "the picture; then its R, G and B channels as the network reads them";
        drawPixels(picture, state.item.decoded.pixels);
        grid.appendChild(picture);
      }
      for (var c = 0; c < tensor.shape[0]; c++) {
        var canvas = mapCanvas(MAP_PX, k >= 0 ? clickMap(k, c) : null);
        canvas.setAttribute("data-channel", c);
        canvas.title = "channel " + c;
        drawChannel(canvas, tensor, c);
        grid.appendChild(canvas);
        canvases.push(canvas);
      }
      block.appendChild(grid);
    } else if (k >= 0 && layers[k].kind === "linear") {
      var strip = el("div", {"class": "cx-units"});
      var scale = 0;
      for (var u = 0; u < tensor.data.length; u++) scale = Math.max(scale, Math.abs(tensor.data[u]));
      for (u = 0; u < tensor.data.length; u++) {
        var v = tensor.data[u] / (scale || 1), cell = el("span", {"class": "cx-unit", "data-unit": u, title: "unit " + u + ": " + short(tensor.data[u])});
        cell.style.background = v >= 0 ? "rgba(214,39,40," + v.toFixed(3) + ")" : "rgba(31,119,180," + (-v).toFixed(3) + ")";
        cell.addEventListener("click", clickUnit(k, u));
        strip.appendChild(cell);
      }
      block.appendChild(strip);
    } else {
      block.appendChild(el("p", {"class": "cx-note", text: tensor.data.length + " values"}));
    }
    state.canvases[k + 1] = canvases;
    return block;
  }
  function clickMap(k, c) { return function (i, j) { select({layer: k, channel: c, i: i, j: j}); }; }
  function clickUnit(k, u) { return function () { select({layer: k, unit: u}); }; }

  // ------------------------------------------------------------------ selection

  // A click on a map is explained by the convolution that made it: a pooled pixel by its
  // window's winner, an activation or batch norm by the same pixel one layer up.
  function explainedBy(selection) {
    var k = selection.layer, c = selection.channel, i = selection.i, j = selection.j;
    while (k >= 0 && layers[k].kind !== "conv") {
      var layer = layers[k];
      if (!isMap(state.values[k].shape)) return null;
      if (layer.kind === "maxpool" || layer.kind === "avgpool") {
        var win = E.poolWindow(layer, state.values[k], c, i, j);
        var tap = win.taps[win.winner >= 0 ? win.winner : 0] || win.taps.filter(Boolean)[0];
        i = tap[0]; j = tap[1];
      } else if (layer.kind === "linear" || layer.kind === "flatten") return null;
      k--;
    }
    return k < 0 ? null : {layer: k, channel: c, i: i, j: j};
  }

  function select(selection) {
    var started = performance.now();
    if (selection.unit !== undefined) {
      state.selection = selection;
      showUnit(selection.layer, selection.unit);
    } else {
      var conv = explainedBy(selection);
      if (!conv) { note.textContent = "This layer is explained by the fully connected view: click a unit."; return; }
      state.selection = conv;
      showConv(conv);
    }
    state.lastClickMs = performance.now() - started;
    root.setAttribute("data-click-ms", state.lastClickMs.toFixed(2));
  }

  // Overlays: the clicked pixel on its map, the receptive field on the layer's input maps.
  // Only the layers that carry one are redrawn on the next click.
  function clearOverlays() {
    (state.overlaid || []).forEach(function (index) {
      (state.canvases[index] || []).forEach(function (canvas, c) { drawChannel(canvas, state.values[index], c); });
    });
    state.overlaid = [];
  }
  function highlight(conv, taps) {
    clearOverlays();
    var k = conv.layer, rows = [], cols = [];
    taps.forEach(function (t) { if (t) { rows.push(t[0]); cols.push(t[1]); } });
    var box = rows.length ? [Math.min.apply(null, rows), Math.max.apply(null, rows),
                             Math.min.apply(null, cols), Math.max.apply(null, cols)] : null;
    (state.canvases[k] || []).forEach(function (canvas, c) { drawChannel(canvas, state.values[k], c, box); });
    var own = (state.canvases[k + 1] || [])[conv.channel];
    if (own) drawChannel(own, state.values[k + 1], conv.channel, null, [conv.i, conv.j]);
    state.overlaid = [k, k + 1];
    return box;
  }

  // ------------------------------------------------------------------ the convolution panel

  function showConv(conv) {
    var k = conv.layer, layer = layers[k], x = state.values[k], co = conv.channel, i = conv.i, j = conv.j;
    var px = E.convPixel(layer, x, co, i, j), kh = layer.kernel[0], kw = layer.kernel[1];
    var box = highlight(conv, px.taps);
    panel.innerHTML = "";
    panel.setAttribute("data-kind", "conv");
    panel.appendChild(el("h3", {text: "Layer " + k + ": " + layer.title}));
    panel.appendChild(el("p", {"class": "cx-formula", html:
      "Output channel <b>" + co + "</b>, pixel (row <b>" + i + "</b>, column <b>" + j + "</b>): " +
      "y = b[" + co + "] + &Sigma;<sub>c</sub> &Sigma;<sub>m,n</sub> W[" + co + ",c,m,n] &middot; X[c, " +
      layer.stride[0] + "&middot;" + i + "+" + layer.dilation[0] + "m&minus;" + layer.padding[0] + ", " +
      layer.stride[1] + "&middot;" + j + "+" + layer.dilation[1] + "n&minus;" + layer.padding[1] + "]"}));

    // pictures: the input channel with the receptive field, the output map, the image
    var strongest = px.channels.reduce(function (best, ch) { return Math.abs(ch.sum) > Math.abs(best.sum) ? ch : best; }, px.channels[0]);
    var inputCanvas = mapCanvas(BIG_PX), outputCanvas = mapCanvas(BIG_PX), imageCanvas = mapCanvas(BIG_PX);
    var inputSelect = el("select", {"class": "cx-input-select"});
    px.channels.forEach(function (ch) {
      var option = el("option", {value: ch.channel, text: "input channel " + ch.channel});
      if (ch === strongest) option.selected = true;
      inputSelect.appendChild(option);
    });
    var drawInput = function () { drawChannel(inputCanvas, x, Number(inputSelect.value), box); };
    inputSelect.addEventListener("change", drawInput);
    drawInput();
    drawChannel(outputCanvas, state.values[k + 1], co, null, [i, j]);
    var field = E.receptiveField(layers, k, i, j, state.values[0].shape);
    drawPixels(imageCanvas, state.item.decoded.pixels);      // the picture, in colour if it has it
    outline(imageCanvas.getContext("2d"), field, "#ffb000");
    panel.appendChild(el("div", {"class": "cx-pictures"}, [
      el("figure", {}, [inputCanvas, el("figcaption", {}, [inputSelect, document.createTextNode(" (layer input, the patch in orange)")])]),
      el("figure", {}, [outputCanvas, el("figcaption", {text: "output channel " + co + " (the pixel in green)"})]),
      el("figure", {}, [imageCanvas, el("figcaption", {text: "receptive field on the input: rows " + field[0] + "\u2013" + field[1] + ", columns " + field[2] + "\u2013" + field[3]})])]));

    // per input channel: kernel, patch, products, their sum
    var list = el("div", {"class": "cx-channels"});
    px.channels.forEach(function (ch) {
      var patch = ch.inputs.map(function (v, t) { return px.taps[t] ? v : null; });
      var products = ch.products.map(function (v, t) { return px.taps[t] ? v : null; });
      list.appendChild(el("div", {"class": "cx-chan" + (ch === strongest ? " cx-strong" : ""), "data-channel": ch.channel}, [
        el("div", {"class": "cx-chan-h"}, [document.createTextNode("input channel " + ch.channel + ": sum "), num(ch.sum, "channel-sum")]),
        el("div", {"class": "cx-row"}, [
          labelled("kernel W", matrix(ch.weights, kh, kw, "kernel")), el("span", {"class": "cx-op", text: "\u00d7"}),
          labelled("patch X", matrix(patch, kh, kw, "patch")), el("span", {"class": "cx-op", text: "="}),
          labelled("products", matrix(products, kh, kw, "products"))])]));
    });
    panel.appendChild(el("h4", {text: "Products, input channel by input channel (" + px.channels.length + ")"}));
    panel.appendChild(list);
    var table = el("table", {"class": "cx-sum"});
    table.appendChild(row("sum over the " + px.channels.length + " input channel" + (px.channels.length > 1 ? "s" : ""), px.total, "sum"));
    table.appendChild(row("+ bias b[" + co + "]", px.bias, "bias"));
    table.appendChild(row("= y, the feature map's value (float32)", px.y, "result"));
    panel.appendChild(table);
    if (state.item.decoded.anchors) {
      panel.appendChild(el("p", {"class": "cx-note", text: "W and X are the model's own float32 numbers (X is " +
        (k === 0 ? "the normalised input image" : "what layer " + (k - 1) + " output for this image in cnnlab") +
        "); each product and sum is exact to float64, y is rounded to float32 like the map."}));
    }
    panel.appendChild(downstream(k, co, i, j, px.y));
    panel.appendChild(convBackwardView(k, co, i, j, px));
  }
  function labelled(text, node) { return el("div", {"class": "cx-labelled"}, [el("div", {"class": "cx-label", text: text}), node]); }

  // What happens to y next: activations, batch norm, then the pooling window it falls into.
  function downstream(k, c, i, j, y) {
    var box = el("div", {"class": "cx-next"}), table = el("table", {"class": "cx-sum"}), v = y;
    box.appendChild(el("h4", {text: "What the next layers do with it"}));
    box.appendChild(table);
    for (var l = k + 1; l < layers.length; l++) {
      var layer = layers[l];
      if (layer.kind === "maxpool" || layer.kind === "avgpool") {
        box.appendChild(poolView(l, c, i, j));
        break;
      }
      if (layer.kind === "dropout") { table.appendChild(row(l + ": Dropout (eval: the identity)", v)); continue; }
      if (!isMap(state.values[l + 1].shape)) break;
      v = at(state.values[l + 1], c, i, j);
      var label = {relu: "ReLU: max(0, y)", leaky_relu: "LeakyReLU", tanh: "tanh(y)", sigmoid: "sigmoid(y)", batchnorm: "BatchNorm (running mean and variance)"}[layer.kind] || layer.kind;
      table.appendChild(row(l + ": " + label, v, layer.kind === "relu" ? "relu" : layer.kind));
    }
    return box;
  }

  function poolView(l, c, i, j) {
    var layer = layers[l], x = state.values[l];
    var pi = Math.floor((i + layer.padding[0]) / layer.stride[0]), pj = Math.floor((j + layer.padding[1]) / layer.stride[1]);
    var outShape = state.values[l + 1].shape;
    var view = el("div", {"class": "cx-pool", "data-role": "pool"});
    if (pi >= outShape[1] || pj >= outShape[2]) {
      view.appendChild(el("p", {text: "Layer " + l + ": " + layer.title + " drops this pixel (it is in no window)."}));
      return view;
    }
    var win = E.poolWindow(layer, x, c, pi, pj), marks = {};
    win.taps.forEach(function (tap, t) { if (tap && tap[0] === i && tap[1] === j) marks[t] = "cx-self"; });
    if (win.winner >= 0) marks[win.winner] = (marks[win.winner] ? marks[win.winner] + " " : "") + "cx-winner";
    var shown = win.values.map(function (v, t) { return win.taps[t] ? v : null; });
    var model = state.values[l + 1];
    view.appendChild(el("p", {html: "Layer " + l + ": " + escapeHtml(layer.title) + ", window of output pixel (" + pi + ", " + pj + "): " +
      (layer.kind === "maxpool" ? "the largest value wins (green; this pixel has a border)" : "the mean of the window")}));
    view.appendChild(matrix(shown, layer.kernel[0], layer.kernel[1], "pool-window", marks));
    var table = el("table", {"class": "cx-sum"});
    if (win.winner >= 0) {
      var tap = win.taps[win.winner];
      var ties = win.values.filter(function (v) { return v === win.values[win.winner]; }).length;
      table.appendChild(row("winner", el("span", {"data-role": "winner", "data-row": tap[0], "data-col": tap[1], text: "row " + tap[0] + ", column " + tap[1] +
        (tap[0] === i && tap[1] === j ? " (this pixel)" : "") +
        (ties > 1 ? "; a tie of " + ties + ": the first in row-major order wins, as in cnnlab.ops and PyTorch" : "")})));
    }
    table.appendChild(row("pooled value", at(model, c, pi, pj), "pooled"));
    view.appendChild(table);
    return view;
  }

  // The backward pass through this pixel (lecture 002): dL/dY, dL/db, dL/dW, dL/dX.
  function convBackwardView(k, co, i, j, px) {
    var layer = layers[k], back = state.backward, dy = back.grads[k], x = state.values[k];
    var view = el("div", {"class": "cx-back", "data-role": "backward"});
    var kh = layer.kernel[0], kw = layer.kernel[1];
    var g = at(dy, co, i, j);
    view.appendChild(el("h4", {text: "Backward: class " + state.target + " (" + className(state.target) + "), L = cross-entropy"}));
    var table = el("table", {"class": "cx-sum"});
    var l;
    for (l = k + 1; l < layers.length && isMap(state.values[l + 1].shape); l++) {
      var after = layers[l], gradAfter = back.grads[l];
      if (after.kind === "maxpool" || after.kind === "avgpool") {
        var pi = Math.floor((i + after.padding[0]) / after.stride[0]), pj = Math.floor((j + after.padding[1]) / after.stride[1]);
        if (pi < gradAfter.shape[1] && pj < gradAfter.shape[2]) {
          table.appendChild(row("dL/d(" + l + ": pool output) at (" + pi + ", " + pj + ")", at(gradAfter, co, pi, pj), "dpool"));
        }
        break;
      }
    }
    for (l = Math.min(l, layers.length) - 1; l > k; l--) {
      table.appendChild(row("dL/d(" + l + ": " + layers[l].kind + " output) at this pixel", at(back.grads[l], co, i, j), "d" + layers[l].kind));
    }
    table.appendChild(row("dL/dY[" + co + ", " + i + ", " + j + "]", g, "dy"));
    var grads = E.convWeightGrad(layer, x, dy, co);
    table.appendChild(row("dL/db[" + co + "] = \u03a3 dL/dY over the map", grads.bias, "dbias"));
    view.appendChild(table);
    dy.signed = true;
    var dyCanvas = mapCanvas(BIG_PX / 2 | 0);
    drawChannel(dyCanvas, dy, co, null, [i, j]);
    view.appendChild(el("figure", {}, [dyCanvas, el("figcaption", {text: "dL/dY of output channel " + co})]));
    var list = el("div", {"class": "cx-channels"});
    px.channels.forEach(function (ch, index) {
      var share = ch.inputs.map(function (v, t) { return px.taps[t] ? g * v : null; });
      var total = Array.prototype.slice.call(grads.weight.subarray(index * kh * kw, (index + 1) * kh * kw));
      var dx = ch.weights.map(function (w, t) { return px.taps[t] ? g * w : null; });
      list.appendChild(el("div", {"class": "cx-chan", "data-channel": ch.channel}, [
        el("div", {"class": "cx-chan-h", text: "input channel " + ch.channel}),
        el("div", {"class": "cx-row"}, [
          labelled("this pixel's dL/dY \u00b7 X", matrix(share, kh, kw, "dw-share")),
          labelled("dL/dW[" + co + "," + ch.channel + "] (all pixels)", matrix(total, kh, kw, "dw")),
          labelled("its dL/dX: dL/dY \u00b7 W", matrix(dx, kh, kw, "dx-share"))])]));
    });
    view.appendChild(list);
    return view;
  }

  // ------------------------------------------------------------------ fully connected panel

  function showUnit(k, o) {
    var layer = layers[k], x = state.values[k], unit = E.linearUnit(layer, x, o);
    clearOverlays();
    panel.innerHTML = "";
    panel.setAttribute("data-kind", "linear");
    var last = k === layers.length - 1;
    panel.appendChild(el("h3", {text: "Layer " + k + ": " + layer.title + ", " + (last ? "logit of class " + o + " (" + className(o) + ")" : "unit " + o)}));
    panel.appendChild(el("p", {"class": "cx-formula", html: "z[" + o + "] = b[" + o + "] + &Sigma;<sub>i</sub> W[" + o + ",i] &middot; a[i] over the " + layer.in + " inputs"}));
    var contributions = [];
    for (var i = 0; i < layer.in; i++) contributions.push([i, layer.weight[o * layer.in + i], x.data[i]]);
    contributions.sort(function (a, b) { return Math.abs(b[1] * b[2]) - Math.abs(a[1] * a[2]); });
    var top = contributions.slice(0, TOP_INPUTS), rest = 0;
    contributions.slice(TOP_INPUTS).forEach(function (c) { rest += c[1] * c[2]; });
    var table = el("table", {"class": "cx-contrib"});
    table.appendChild(el("tr", {}, [el("th", {text: "input i"}), el("th", {text: "W[" + o + ",i]"}), el("th", {text: "a[i]"}), el("th", {text: "W\u00b7a"})]));
    var source = flattenedFrom(k), origin = source >= 0 ? placeOf(state.values[source].shape) : null;
    top.forEach(function (c, rank) {
      var where = origin ? origin(c[0]) : null;
      table.appendChild(el("tr", {"data-input": c[0]}, [
        el("td", {text: (rank + 1) + ". " + c[0] + (where ? " (ch " + where.channel + ", " + where.row + ", " + where.col + ")" : "")}),
        el("td", {}, [num(c[1])]), el("td", {}, [num(c[2])]), el("td", {}, [num(c[1] * c[2], "contribution")])]));
    });
    panel.appendChild(el("h4", {text: "The " + top.length + " largest contributions |W\u00b7a|"}));
    panel.appendChild(table);
    if (source >= 0) panel.appendChild(contributionPlaces(source, top, origin));
    var sums = el("table", {"class": "cx-sum"});
    if (contributions.length > TOP_INPUTS) sums.appendChild(row("the other " + (contributions.length - TOP_INPUTS) + " inputs add", rest, "rest"));
    sums.appendChild(row("sum of all W\u00b7a", unit.total, "sum"));
    sums.appendChild(row("+ bias b[" + o + "]", unit.bias, "bias"));
    sums.appendChild(row("= z[" + o + "] (float32)", unit.y, "result"));
    panel.appendChild(sums);
    if (last) panel.appendChild(softmaxView(state.values[k + 1].data, o));
    var back = state.backward, g = back.grads[k].data[o];
    var bt = el("table", {"class": "cx-sum", "data-role": "backward"});
    bt.appendChild(row("dL/dz[" + o + "]" + (last ? " = p[" + o + "] \u2212 [" + o + " = " + state.target + "]" : ""), g, "dz"));
    top.slice(0, 3).forEach(function (c) {
      bt.appendChild(row("dL/dW[" + o + "," + c[0] + "] = dL/dz \u00b7 a[" + c[0] + "]", g * c[2], "dw"));
    });
    panel.appendChild(el("h4", {text: "Backward: class " + state.target + " (" + className(state.target) + ")"}));
    panel.appendChild(bt);
  }

  // The index of the map (in state.values) that the input of Linear layer k was flattened
  // from, or -1 (its input is another layer's vector). Flatten, Dropout and activations keep
  // the positions, so input i is pixel i of that map in (C, H, W) order.
  function flattenedFrom(k) {
    for (var l = k - 1; l >= 0; l--) {
      if (isMap(state.values[l].shape)) return l;
      if (layers[l].kind === "linear") return -1;
    }
    return -1;
  }
  function placeOf(shape) {
    var plane = shape[1] * shape[2];
    return function (index) {
      var rem = index % plane;
      return {channel: Math.floor(index / plane), row: Math.floor(rem / shape[2]), col: rem % shape[2]};
    };
  }

  // Where the largest contributions sit: each channel of the flattened map (the input image
  // for a network that starts with Flatten) that holds one, with those inputs outlined, red
  // where W·a > 0 and blue where it is < 0; the same outlines go on the maps on the left.
  function contributionPlaces(source, top, origin) {
    var tensor = state.values[source], shape = tensor.shape, channels = [], marks = {};
    top.forEach(function (c, rank) {
      var where = origin(c[0]);
      if (!marks[where.channel]) { marks[where.channel] = []; channels.push(where.channel); }
      marks[where.channel].push({input: c[0], rank: rank, row: where.row, col: where.col, positive: c[1] * c[2] >= 0});
    });
    var px = Math.min(BIG_PX, Math.max(84, 7 * Math.max(shape[1], shape[2])));
    var view = el("div", {"class": "cx-places", "data-role": "contribution-places"});
    var what = source === 0 ? "the input image" : "the output of layer " + (source - 1) + " (" + layers[source - 1].title + ")";
    view.appendChild(el("h4", {text: "Where they sit on " + what + ", " + shape.join("\u00d7") + " flattened: red W\u00b7a > 0, blue < 0"}));
    var row = el("div", {"class": "cx-pictures"});
    channels.forEach(function (c) {
      var canvas = mapCanvas(px), wrap = el("div", {"class": "cx-marked", "data-channel": c}, [canvas]);
      drawChannel(canvas, tensor, c);
      marks[c].forEach(function (m) {
        wrap.appendChild(el("span", {"class": "cx-mark " + (m.positive ? "cx-mark-pos" : "cx-mark-neg"),
          "data-input": m.input, "data-rank": m.rank + 1, "data-channel": c, "data-row": m.row, "data-col": m.col,
          title: (m.rank + 1) + ". input " + m.input + ": channel " + c + ", row " + m.row + ", column " + m.col,
          style: "left:" + (100 * m.col / shape[2]) + "%;top:" + (100 * m.row / shape[1]) + "%;width:" +
                 (100 / shape[2]) + "%;height:" + (100 / shape[1]) + "%"}));
      });
      row.appendChild(el("figure", {}, [wrap, el("figcaption", {text: "channel " + c + ": " + marks[c].map(function (m) { return "#" + (m.rank + 1); }).join(" ")})]));
    });
    view.appendChild(row);
    (state.canvases[source] || []).forEach(function (canvas, c) {
      if (marks[c]) drawChannel(canvas, tensor, c, null, null, marks[c]);
    });
    state.overlaid = [source];
    return view;
  }

  function softmaxView(logits, o) {
    var s = E.softmax(logits), view = el("div", {"class": "cx-softmax", "data-role": "softmax"});
    view.appendChild(el("h4", {text: "Softmax: p[k] = exp(z[k] \u2212 max z) / \u03a3 exp(z \u2212 max z)"}));
    var table = el("table", {"class": "cx-contrib"});
    table.appendChild(el("tr", {}, ["class", "z", "z \u2212 max", "exp", "p"].map(function (h) { return el("th", {text: h}); })));
    for (var k = 0; k < logits.length; k++) {
      table.appendChild(el("tr", {"class": k === o ? "cx-strong" : ""}, [el("td", {text: k + " " + className(k)}),
        el("td", {}, [num(logits[k])]), el("td", {}, [num(logits[k] - s.max)]), el("td", {}, [num(s.exps[k])]),
        el("td", {}, [num(s.probabilities[k], "probability")])]));
    }
    table.appendChild(el("tr", {}, [el("td", {text: "\u03a3"}), el("td"), el("td"), el("td", {}, [num(s.sum)]), el("td", {text: "1"})]));
    view.appendChild(table);
    return view;
  }

  // ------------------------------------------------------------------ upload

  // The browser decodes the file to RGBA bytes as they are stored: no colour management
  // (Pillow applies none), no premultiplied alpha, EXIF rotation applied (Pillow's
  // exif_transpose). A 2-D canvas keeps premultiplied pixels, so a semi-transparent pixel
  // comes back within 1 level of its stored value, and within 1 gray level after the
  // background is blended in (docs/explorer.md).
  function decodeUpload(file) {
    function read(source, width, height) {
      if (width * height > data.max_pixels) {
        throw new Error(width + "x" + height + " pixels is too large (the limit is " +
                        data.max_pixels.toLocaleString("en") + " pixels): shrink it first");
      }
      var canvas = document.createElement("canvas");
      canvas.width = width; canvas.height = height;
      var ctx = canvas.getContext("2d", {willReadFrequently: true});
      ctx.drawImage(source, 0, 0);
      return {rgba: ctx.getImageData(0, 0, width, height).data, width: width, height: height};
    }
    if (window.createImageBitmap) {
      return createImageBitmap(file, {colorSpaceConversion: "none", premultiplyAlpha: "none",
                                      imageOrientation: "from-image"})
        .then(function (bitmap) { return read(bitmap, bitmap.width, bitmap.height); },
              function () { throw new Error("the browser cannot read this picture"); });
    }
    return new Promise(function (resolve, reject) {
      var image = new Image(), url = URL.createObjectURL(file);
      image.onload = function () {
        URL.revokeObjectURL(url);
        try { resolve(read(image, image.naturalWidth, image.naturalHeight)); } catch (error) { reject(error); }
      };
      image.onerror = function () { URL.revokeObjectURL(url); reject(new Error("the browser cannot read this picture")); };
      image.src = url;
    });
  }

  // The run's description of how predict prepares a picture, with the kind the menu chose
  // (predict's --prepare).
  function preprocessChosen() {
    return Object.assign({}, preparation.preprocess, {kind: prepareSelect.value});
  }

  function prepareUpload(decoded) {
    var result = CnnlabPrepare.prepare(decoded.rgba, decoded.width, decoded.height, preprocessChosen(),
                                       preparation.resize_passes);
    var item = {name: decoded.name, label: -1, pixels: result.pixels, inputs: null, logits: null,
                normalization: preparation.normalization, upload: decoded};
    state.uploads = (state.uploads || []).filter(function (other) { return other.upload !== decoded; }).concat([item]);
    note.textContent = decoded.name + ": prepared as 'cnnlab predict" + (prepareSelect.value !== runKind ? " --prepare " + prepareSelect.value : "") +
      "' prepares it: " + result.steps.concat(preparation.formula ? [preparation.formula] : []).join(", ") + ".";
    note.setAttribute("data-state", "prepared");
    selectItem(item);
  }

  function onUpload() {
    var file = upload.files && upload.files[0];
    if (!file) return;
    note.textContent = file.name + ": reading";
    note.setAttribute("data-state", "reading");
    decodeUpload(file).then(function (decoded) {
      decoded.name = file.name;
      prepareUpload(decoded);
    }).catch(function (error) {
      note.textContent = file.name + ": " + error.message;
      note.setAttribute("data-state", "error");
    });
  }
  function onPrepareChange() {
    var item = state.item;
    if (item && item.upload) {
      try { prepareUpload(item.upload); } catch (error) {
        note.textContent = item.upload.name + ": " + error.message;
        note.setAttribute("data-state", "error");
      }
    }
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]; });
  }

  window.cnnlabExplorer = {data: data, layers: layers, state: state, select: select,
                           selectImage: function (index) { selectItem(data.images[index]); },
                           addImage: function (name, pixels) {
                             var item = {name: name, label: -1, pixels: pixels, inputs: null, logits: null};
                             state.uploads = (state.uploads || []).concat([item]); selectItem(item);
                           }};
  if (data.images.length) selectItem(data.images[0]);
})();
