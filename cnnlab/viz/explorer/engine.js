// cnnlab explorer: the network's layers recomputed in the browser (forward and backward).
//
// Plain JavaScript, no libraries. Every layer works on one image: a tensor is
// {shape: [C, H, W] or [F], data: Float32Array}. Sums run in float64 (a product of two
// float32 numbers is exact in float64) and each layer's output is rounded to float32, as the
// model stores it. convPixel() and conv() add in the same order (input channel by input
// channel, each over the kernel rows and columns), so a clicked pixel's sum is the very
// number in the feature map. The backward pass follows cnnlab.ops (the lecture's dL/dY,
// dL/dW, dL/dX) in float64.
"use strict";

var CnnlabEngine = (function () {
  var fround = Math.fround;

  function bytes(base64) {
    var text = atob(base64), out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  // Typed arrays read the platform's byte order; every browser in use is little-endian.
  function float32(base64) { return new Float32Array(bytes(base64).buffer); }

  function size(shape) { return shape.reduce(function (a, b) { return a * b; }, 1); }

  // The layers of the page's JSON, with their parameters decoded once.
  function prepare(layers) {
    return layers.map(function (layer) {
      var copy = Object.assign({}, layer);
      ["weight", "bias", "mean", "var"].forEach(function (key) {
        if (typeof layer[key] === "string") copy[key] = float32(layer[key]);
      });
      return copy;
    });
  }

  // ------------------------------------------------------------------ convolution

  // The taps of output pixel (i, j): for each kernel row m and column n the input row and
  // column it reads, or null where it falls on the zero padding. `padding` is the zeros
  // before (top, left), `padding_after` those after (bottom, right).
  function convTaps(layer, inShape, i, j) {
    var kh = layer.kernel[0], kw = layer.kernel[1], taps = [];
    for (var m = 0; m < kh; m++) {
      for (var n = 0; n < kw; n++) {
        var r = i * layer.stride[0] + m * layer.dilation[0] - layer.padding[0];
        var c = j * layer.stride[1] + n * layer.dilation[1] - layer.padding[1];
        var inside = r >= 0 && r < inShape[1] && c >= 0 && c < inShape[2];
        taps.push(inside ? [r, c] : null);
      }
    }
    return taps;
  }

  function groupChannels(layer, co) {
    var perGroup = layer.in / layer.groups, group = Math.floor(co / (layer.out / layer.groups));
    return {first: group * perGroup, count: perGroup};
  }

  // Everything output pixel (co, i, j) of a convolution computes, for the panel.
  function convPixel(layer, x, co, i, j) {
    var kh = layer.kernel[0], kw = layer.kernel[1], taps = convTaps(layer, x.shape, i, j);
    var g = groupChannels(layer, co), H = x.shape[1], W = x.shape[2], total = 0, channels = [];
    for (var k = 0; k < g.count; k++) {
      var ci = g.first + k, base = (co * g.count + k) * kh * kw, sum = 0;
      var weights = [], inputs = [], products = [];
      for (var t = 0; t < kh * kw; t++) {
        var w = layer.weight[base + t], tap = taps[t];
        var v = tap ? x.data[(ci * H + tap[0]) * W + tap[1]] : 0;
        weights.push(w); inputs.push(v); products.push(w * v);
        if (tap) sum += w * v;
      }
      total += sum;
      channels.push({channel: ci, weights: weights, inputs: inputs, products: products, sum: sum});
    }
    var bias = layer.bias ? layer.bias[co] : 0;
    return {channels: channels, taps: taps, total: total, bias: bias, y: fround(total + bias)};
  }

  function convShape(layer, inShape) {
    var out = [layer.out];
    for (var a = 0; a < 2; a++) {
      var span = layer.dilation[a] * (layer.kernel[a] - 1) + 1;
      out.push(Math.floor((inShape[a + 1] + layer.padding[a] + layer.padding_after[a] - span) / layer.stride[a]) + 1);
    }
    return out;
  }

  function conv(layer, x) {
    var shape = convShape(layer, x.shape), Ho = shape[1], Wo = shape[2];
    var H = x.shape[1], W = x.shape[2], kh = layer.kernel[0], kw = layer.kernel[1];
    var sh = layer.stride[0], sw = layer.stride[1], dh = layer.dilation[0], dw = layer.dilation[1];
    var ph = layer.padding[0], pw = layer.padding[1], wt = layer.weight, xd = x.data;
    var out = new Float32Array(size(shape));
    for (var co = 0; co < layer.out; co++) {
      var g = groupChannels(layer, co), bias = layer.bias ? layer.bias[co] : 0;
      for (var i = 0; i < Ho; i++) {
        for (var j = 0; j < Wo; j++) {
          var total = 0;
          for (var k = 0; k < g.count; k++) {
            var plane = (g.first + k) * H, base = (co * g.count + k) * kh * kw, sum = 0;
            for (var m = 0; m < kh; m++) {
              var r = i * sh + m * dh - ph;
              if (r < 0 || r >= H) continue;
              var row = (plane + r) * W, wrow = base + m * kw;
              for (var n = 0; n < kw; n++) {
                var c = j * sw + n * dw - pw;
                if (c >= 0 && c < W) sum += wt[wrow + n] * xd[row + c];
              }
            }
            total += sum;
          }
          out[(co * Ho + i) * Wo + j] = fround(total + bias);
        }
      }
    }
    return {shape: shape, data: out};
  }

  // dL/dX of a convolution (the lecture's "full" correlation with the kernel).
  function convBackward(layer, x, dy) {
    var H = x.shape[1], W = x.shape[2], Ho = dy.shape[1], Wo = dy.shape[2];
    var kh = layer.kernel[0], kw = layer.kernel[1], dx = new Float64Array(size(x.shape));
    for (var co = 0; co < layer.out; co++) {
      var g = groupChannels(layer, co);
      for (var i = 0; i < Ho; i++) {
        for (var j = 0; j < Wo; j++) {
          var d = dy.data[(co * Ho + i) * Wo + j];
          if (d === 0) continue;
          for (var k = 0; k < g.count; k++) {
            var plane = (g.first + k) * H, base = (co * g.count + k) * kh * kw;
            for (var m = 0; m < kh; m++) {
              var r = i * layer.stride[0] + m * layer.dilation[0] - layer.padding[0];
              if (r < 0 || r >= H) continue;
              for (var n = 0; n < kw; n++) {
                var c = j * layer.stride[1] + n * layer.dilation[1] - layer.padding[1];
                if (c >= 0 && c < W) dx[(plane + r) * W + c] += d * layer.weight[base + m * kw + n];
              }
            }
          }
        }
      }
    }
    return {shape: x.shape, data: dx};
  }

  // dL/dW[co] = sum over output pixels of dL/dY(co, i, j) times the input patch (lecture 002).
  function convWeightGrad(layer, x, dy, co) {
    var Ho = dy.shape[1], Wo = dy.shape[2], g = groupChannels(layer, co);
    var kh = layer.kernel[0], kw = layer.kernel[1], H = x.shape[1], W = x.shape[2];
    var dw = new Float64Array(g.count * kh * kw), db = 0;
    for (var i = 0; i < Ho; i++) {
      for (var j = 0; j < Wo; j++) {
        var d = dy.data[(co * Ho + i) * Wo + j];
        db += d;
        if (d === 0) continue;
        var taps = convTaps(layer, x.shape, i, j);
        for (var k = 0; k < g.count; k++) {
          var plane = (g.first + k) * H;
          for (var t = 0; t < kh * kw; t++) {
            if (taps[t]) dw[k * kh * kw + t] += d * x.data[(plane + taps[t][0]) * W + taps[t][1]];
          }
        }
      }
    }
    return {weight: dw, bias: db};
  }

  // ------------------------------------------------------------------ pooling

  function poolShape(layer, inShape) {
    var out = [inShape[0]];
    for (var a = 0; a < 2; a++) {
      out.push(Math.floor((inShape[a + 1] + layer.padding[a] + layer.padding_after[a] - layer.kernel[a]) / layer.stride[a]) + 1);
    }
    return out;
  }

  // The window of pooled pixel (c, i, j): its taps (row, column or null on the padding), the
  // values there, and for max pooling the first maximum in row-major order (as cnnlab.ops).
  function poolWindow(layer, x, c, i, j) {
    var H = x.shape[1], W = x.shape[2], taps = [], values = [], best = -1, sum = 0;
    for (var m = 0; m < layer.kernel[0]; m++) {
      for (var n = 0; n < layer.kernel[1]; n++) {
        var r = i * layer.stride[0] + m - layer.padding[0], col = j * layer.stride[1] + n - layer.padding[1];
        var inside = r >= 0 && r < H && col >= 0 && col < W;
        var v = inside ? x.data[(c * H + r) * W + col] : (layer.kind === "maxpool" ? -Infinity : 0);
        taps.push(inside ? [r, col] : null);
        values.push(v);
        sum += v;
        if (best < 0 || v > values[best]) best = values.length - 1;
      }
    }
    var y = layer.kind === "maxpool" ? values[best] : fround(sum / (layer.kernel[0] * layer.kernel[1]));
    return {taps: taps, values: values, winner: layer.kind === "maxpool" ? best : -1, y: y};
  }

  function pool(layer, x) {
    var shape = poolShape(layer, x.shape), out = new Float32Array(size(shape));
    var argmax = layer.kind === "maxpool" ? new Int32Array(out.length) : null;
    var H = x.shape[1], W = x.shape[2];
    for (var c = 0; c < shape[0]; c++) {
      for (var i = 0; i < shape[1]; i++) {
        for (var j = 0; j < shape[2]; j++) {
          var win = poolWindow(layer, x, c, i, j), o = (c * shape[1] + i) * shape[2] + j;
          out[o] = win.y;
          if (argmax) {
            var tap = win.taps[win.winner];
            argmax[o] = tap ? (c * H + tap[0]) * W + tap[1] : -1;
          }
        }
      }
    }
    return {shape: shape, data: out, argmax: argmax};
  }

  function poolBackward(layer, x, y, dy) {
    var dx = new Float64Array(size(x.shape)), H = x.shape[1], W = x.shape[2];
    if (layer.kind === "maxpool") {
      for (var o = 0; o < dy.data.length; o++) if (y.argmax[o] >= 0) dx[y.argmax[o]] += dy.data[o];
      return {shape: x.shape, data: dx};
    }
    var area = layer.kernel[0] * layer.kernel[1], s = dy.shape;
    for (var c = 0; c < s[0]; c++) {
      for (var i = 0; i < s[1]; i++) {
        for (var j = 0; j < s[2]; j++) {
          var d = dy.data[(c * s[1] + i) * s[2] + j] / area;
          for (var m = 0; m < layer.kernel[0]; m++) {
            for (var n = 0; n < layer.kernel[1]; n++) {
              var r = i * layer.stride[0] + m - layer.padding[0], col = j * layer.stride[1] + n - layer.padding[1];
              if (r >= 0 && r < H && col >= 0 && col < W) dx[(c * H + r) * W + col] += d;
            }
          }
        }
      }
    }
    return {shape: x.shape, data: dx};
  }

  // ------------------------------------------------------------------ the rest

  function linearUnit(layer, x, o) {
    var base = o * layer.in, total = 0;
    for (var i = 0; i < layer.in; i++) total += layer.weight[base + i] * x.data[i];
    var bias = layer.bias ? layer.bias[o] : 0;
    return {total: total, bias: bias, y: fround(total + bias)};
  }

  function linear(layer, x) {
    var out = new Float32Array(layer.out);
    for (var o = 0; o < layer.out; o++) out[o] = linearUnit(layer, x, o).y;
    return {shape: [layer.out], data: out};
  }

  function elementwise(x, f) {
    var out = new Float32Array(x.data.length);
    for (var i = 0; i < out.length; i++) out[i] = f(x.data[i], i);
    return {shape: x.shape, data: out};
  }

  function channelOf(shape, index) {
    return shape.length === 3 ? Math.floor(index / (shape[1] * shape[2])) : index;
  }

  function forwardLayer(layer, x) {
    switch (layer.kind) {
      case "conv": return conv(layer, x);
      case "linear": return linear(layer, x);
      case "maxpool": case "avgpool": return pool(layer, x);
      case "relu": return elementwise(x, function (v) { return v > 0 ? v : 0; });
      case "leaky_relu":
        var slope = fround(layer.slope);
        return elementwise(x, function (v) { return v > 0 ? v : fround(v * slope); });
      case "tanh": return elementwise(x, function (v) { return fround(Math.tanh(v)); });
      case "sigmoid": return elementwise(x, function (v) { return fround(1 / (1 + Math.exp(-v))); });
      case "flatten": return {shape: [x.data.length], data: x.data};
      case "dropout": return x;   // eval mode
      case "batchnorm":
        return elementwise(x, function (v, i) {
          var c = channelOf(x.shape, i);
          return fround((v - layer.mean[c]) / Math.sqrt(layer.var[c] + layer.eps) * layer.weight[c] + layer.bias[c]);
        });
    }
    throw new Error("unknown layer kind " + layer.kind);
  }

  // Every layer's input and the output: values[k] is layer k's input. Where `anchors` has
  // the model's own float32 input of a layer (keyed by its index), that layer starts from it,
  // so each Conv2d and Linear works on exactly the numbers the model saw.
  function forward(layers, x, anchors) {
    var values = [x];
    for (var k = 0; k < layers.length; k++) {
      var input = values[k];
      if (anchors && anchors[k]) {
        input = Object.assign({}, input, {data: anchors[k]});   // a pool keeps its argmax
        values[k] = input;
        // the same numbers before a Flatten or Dropout (eval): the model's own there too
        for (var l = k - 1; l >= 0 && (layers[l].kind === "flatten" || layers[l].kind === "dropout"); l--) {
          values[l] = Object.assign({}, values[l], {data: anchors[k]});
        }
      }
      values.push(forwardLayer(layers[k], input));
    }
    return values;
  }

  function softmax(logits) {
    var max = -Infinity, i;
    for (i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
    var exps = [], sum = 0;
    for (i = 0; i < logits.length; i++) { exps.push(Math.exp(logits[i] - max)); sum += exps[i]; }
    return {max: max, exps: exps, sum: sum, probabilities: exps.map(function (e) { return e / sum; })};
  }

  // dL/d(output of layer k) for every k, for the cross-entropy loss of class `target`:
  // dL/dz = softmax(z) - onehot(target), then each layer's backward (cnnlab.ops).
  function backward(layers, values, target) {
    var logits = values[values.length - 1].data, probabilities = softmax(logits).probabilities;
    var d = new Float64Array(logits.length);
    for (var i = 0; i < d.length; i++) d[i] = probabilities[i] - (i === target ? 1 : 0);
    var grads = new Array(layers.length);
    var dy = {shape: values[layers.length].shape, data: d};
    for (var k = layers.length - 1; k >= 0; k--) {
      grads[k] = dy;
      var layer = layers[k], x = values[k], y = values[k + 1], dx = new Float64Array(x.data.length);
      switch (layer.kind) {
        case "conv": dy = convBackward(layer, x, dy); continue;
        case "maxpool": case "avgpool": dy = poolBackward(layer, x, y, dy); continue;
        case "linear":
          for (var o = 0; o < layer.out; o++) {
            var g = dy.data[o], base = o * layer.in;
            if (g !== 0) for (var n = 0; n < layer.in; n++) dx[n] += g * layer.weight[base + n];
          }
          break;
        default:
          for (var e = 0; e < dx.length; e++) dx[e] = dy.data[e] * localSlope(layer, x, y, e);
      }
      dy = {shape: x.shape, data: dx};
    }
    return {grads: grads, dlogits: d, probabilities: probabilities};
  }

  // d(output)/d(input) of an elementwise layer at element e.
  function localSlope(layer, x, y, e) {
    var v = x.data[e], out = y.data[e];
    switch (layer.kind) {
      case "relu": return v > 0 ? 1 : 0;
      case "leaky_relu": return v > 0 ? 1 : layer.slope;
      case "tanh": return 1 - out * out;
      case "sigmoid": return out * (1 - out);
      case "batchnorm":
        var c = channelOf(x.shape, e);
        return layer.weight[c] / Math.sqrt(layer.var[c] + layer.eps);
      default: return 1;   // flatten, dropout (eval)
    }
  }

  // The input rows and columns that output rows r0..r1, columns c0..c1 of layer k depend on.
  function inputRegion(layer, box) {
    if (layer.kind === "conv" || layer.kind === "maxpool" || layer.kind === "avgpool") {
      var d = layer.dilation || [1, 1];
      return [box[0] * layer.stride[0] - layer.padding[0],
              box[1] * layer.stride[0] - layer.padding[0] + d[0] * (layer.kernel[0] - 1),
              box[2] * layer.stride[1] - layer.padding[1],
              box[3] * layer.stride[1] - layer.padding[1] + d[1] * (layer.kernel[1] - 1)];
    }
    return box;
  }

  // The receptive field of pixel (i, j) of layer k's output on the network's input image.
  function receptiveField(layers, k, i, j, inputShape) {
    var box = [i, i, j, j];
    for (var l = k; l >= 0; l--) box = inputRegion(layers[l], box);
    return [Math.max(0, box[0]), Math.min(inputShape[1] - 1, box[1]),
            Math.max(0, box[2]), Math.min(inputShape[2] - 1, box[3])];
  }

  // The model's input from uint8 pixels, as cnnlab.data.to_float computes it in float32:
  // x = p / 255, or (p / 255 - mean) / std ("standard"). One float64 operation rounded to
  // float32 is the float32 operation's result.
  function normalize(pixels, normalization) {
    var out = new Float32Array(pixels.length), standard = normalization && normalization.kind === "standard";
    var mean = standard ? fround(normalization.mean) : 0, std = standard ? fround(normalization.std) : 1;
    for (var i = 0; i < pixels.length; i++) {
      var v = fround(pixels[i] / 255);
      out[i] = standard ? fround(fround(v - mean) / std) : v;
    }
    return out;
  }

  return {
    bytes: bytes, float32: float32, size: size, prepare: prepare, forward: forward,
    forwardLayer: forwardLayer, backward: backward, softmax: softmax, convPixel: convPixel,
    convTaps: convTaps, convWeightGrad: convWeightGrad, poolWindow: poolWindow,
    linearUnit: linearUnit, receptiveField: receptiveField, normalize: normalize
  };
})();
