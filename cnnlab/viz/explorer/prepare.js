// cnnlab explorer: an uploaded picture prepared as `cnnlab predict` prepares it.
//
// A port of cnnlab/data/images.py, driven by the description the run carries (the page's
// data.preparation: cnnlab.training.checkpoint.input_preparation with the checkpoint's
// meta["preprocess"]): the same steps in the same order with the same arithmetic.
//
// - decoding (decode_image, read_image): the browser decodes the file to RGBA bytes; gray is
//   Pillow's convert("L") (ITU-R 601-2 luma in integer arithmetic), transparent pixels take
//   the background (the colour opposite the ink);
// - "resize": the training channels, inverted when the picture's background is the opposite
//   of the training images' (match_polarity), resized to the training size with Pillow's
//   antialiased bilinear filter, in its fixed-point arithmetic (resize_pixels);
// - "digit": dark background, contrast stretched, cropped to the ink, the longer side scaled
//   to 20/28 of the field with the same triangle filter, pasted centred by mass (prepare_digit);
// - "none": channels only; the picture must have the training size.
// Pixels are uint8 planes in channel order (C, H, W), as the model reads them.
// tests/test_explorer_browser.py checks each step against the Python functions.
"use strict";

var CnnlabPrepare = (function () {
  var MIN_CONTRAST = 16, INK_THRESHOLD = 0.1;
  // Pillow's fixed-point resampling: coefficients and sums in units of 2^-22
  var PRECISION_BITS = 22, ONE = 1 << PRECISION_BITS;
  var fround = Math.fround;

  // Python's round() and NumPy's rint(): halves go to the even neighbour.
  function roundHalfEven(v) {
    var r = Math.round(v);
    return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }
  function toByte(v) { return Math.min(Math.max(roundHalfEven(v), 0), 255); }

  // ------------------------------------------------------------------ decoding

  function isOpaque(rgba) {
    for (var i = 3; i < rgba.length; i += 4) if (rgba[i] !== 255) return false;
    return true;
  }
  function fullyTransparent() { return new Error("the image is fully transparent: nothing to classify"); }

  // read_image: float gray levels, Pillow's convert("L"), transparent pixels set to the
  // background (_composite_alpha: white when the opaque pixels are dark on average).
  function grayFromRGBA(rgba, width, height) {
    var n = width * height, gray = new Float64Array(n), i;
    for (i = 0; i < n; i++) {
      gray[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    }
    if (isOpaque(rgba)) return gray;
    var sum = 0, count = 0;
    for (i = 0; i < n; i++) if (rgba[4 * i + 3] / 255 > 0.5) { sum += gray[i]; count++; }
    if (!count) throw fullyTransparent();
    var background = sum / count < 128 ? 255 : 0;
    for (i = 0; i < n; i++) {
      var alpha = rgba[4 * i + 3] / 255;
      gray[i] = gray[i] * alpha + background * (1 - alpha);
    }
    return gray;
  }

  // decode_image(path, channels): uint8 planes (C, H, W); one channel is read_image's gray
  // rounded, three are RGB with transparency composited (_composite_alpha_rgb).
  function pixelsFromRGBA(rgba, width, height, channels) {
    var n = width * height, out = new Uint8Array(channels * n), i, k;
    if (channels === 1) {
      var gray = grayFromRGBA(rgba, width, height);
      for (i = 0; i < n; i++) out[i] = toByte(gray[i]);
      return out;
    }
    if (channels !== 3) throw new Error("pictures are decoded to 1 (gray) or 3 (RGB) channels, not " + channels);
    if (isOpaque(rgba)) {
      for (k = 0; k < 3; k++) for (i = 0; i < n; i++) out[k * n + i] = rgba[4 * i + k];
      return out;
    }
    var sum = 0, count = 0;
    for (i = 0; i < n; i++) {
      if (rgba[4 * i + 3] / 255 > 0.5) { sum += rgba[4 * i] + rgba[4 * i + 1] + rgba[4 * i + 2]; count += 3; }
    }
    if (!count) throw fullyTransparent();
    var background = sum / count < 128 ? 255 : 0;
    for (i = 0; i < n; i++) {
      var alpha = rgba[4 * i + 3] / 255;
      for (k = 0; k < 3; k++) out[k * n + i] = toByte(rgba[4 * i + k] * alpha + background * (1 - alpha));
    }
    return out;
  }

  // ------------------------------------------------------------------ the "resize" preparation

  // NumPy's float32 median: the middle value, or the float32 mean of the two middle ones.
  function medianFloat32(values) {
    var sorted = Float32Array.from(values).sort(), mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : fround(fround(sorted[mid - 1] + sorted[mid]) / 2);
  }

  // border_level: the median of the border pixels of the channels' float32 mean.
  function borderLevel(pixels, channels, height, width) {
    var n = height * width, border = [];
    function level(r, c) {
      var sum = 0;
      for (var k = 0; k < channels; k++) sum += pixels[k * n + r * width + c];
      return fround(sum / channels);   // exact sum of bytes, one float32 division
    }
    var r, c;
    for (c = 0; c < width; c++) border.push(level(0, c));
    for (c = 0; c < width; c++) border.push(level(height - 1, c));
    for (r = 1; r < height - 1; r++) border.push(level(r, 0));
    for (r = 1; r < height - 1; r++) border.push(level(r, width - 1));
    return medianFloat32(border);
  }

  // match_polarity: invert when the background is the opposite of the training images'.
  function matchPolarity(pixels, channels, height, width, polarity) {
    if (polarity !== "dark" && polarity !== "light") return {pixels: pixels, inverted: false};
    var light = borderLevel(pixels, channels, height, width) > 127.5;
    if (light !== (polarity === "dark")) return {pixels: pixels, inverted: false};
    var out = new Uint8Array(pixels.length);
    for (var i = 0; i < pixels.length; i++) out[i] = 255 - pixels[i];
    return {pixels: out, inverted: true};
  }

  // Pillow's precompute_coeffs (bilinear, support 1) and normalize_coeffs_8bpc: for each
  // output pixel the first input pixel it reads and its integer weights.
  function pillowCoefficients(inSize, outSize) {
    var scale = inSize / outSize, filterscale = Math.max(scale, 1), support = filterscale;
    var reciprocal = 1 / filterscale, rows = [];
    for (var o = 0; o < outSize; o++) {
      var centre = (o + 0.5) * scale, total = 0, x;
      var first = Math.max(0, Math.trunc(centre - support + 0.5));
      var count = Math.min(inSize, Math.trunc(centre + support + 0.5)) - first;
      var weights = new Float64Array(count), fixed = new Int32Array(count);
      for (x = 0; x < count; x++) {
        var distance = Math.abs((x + first - centre + 0.5) * reciprocal);
        weights[x] = distance < 1 ? 1 - distance : 0;
        total += weights[x];
      }
      for (x = 0; x < count; x++) {
        fixed[x] = Math.trunc(0.5 + (total !== 0 ? weights[x] / total : weights[x]) * ONE);
      }
      rows.push({first: first, weights: fixed});
    }
    return rows;
  }
  // One pass of Pillow's resize over a (height x width) plane: along the rows (horizontal)
  // or the columns, each output byte its rounded fixed-point sum, clipped (clip8).
  function resamplePass(plane, height, width, outSize, horizontal) {
    var inSize = horizontal ? width : height, coefficients = pillowCoefficients(inSize, outSize);
    var outHeight = horizontal ? height : outSize, outWidth = horizontal ? outSize : width;
    var out = new Uint8Array(outHeight * outWidth), step = horizontal ? 1 : width;
    for (var r = 0; r < outHeight; r++) {
      for (var c = 0; c < outWidth; c++) {
        var entry = coefficients[horizontal ? c : r], weights = entry.weights, sum = ONE / 2;
        var at = horizontal ? r * width + entry.first : entry.first * width + c;
        for (var t = 0; t < weights.length; t++, at += step) sum += plane[at] * weights[t];
        out[r * outWidth + c] = Math.min(Math.max(Math.floor(sum / ONE), 0), 255);
      }
    }
    return out;
  }

  // resize_pixels: uint8 planes (C, H, W) -> (C, outH, outW), Image.resize(..., BILINEAR):
  // two passes, each rounded to bytes. Pillow runs the horizontal one first, except (from
  // Pillow 13, `passes` "pillow-13") when only the height shrinks.
  function resizePixels(pixels, channels, height, width, outHeight, outWidth, passes) {
    if (height === outHeight && width === outWidth) return pixels;
    var verticalFirst = passes === "pillow-13" && outWidth >= width && outHeight < height;
    var n = height * width, result = new Uint8Array(channels * outHeight * outWidth);
    for (var k = 0; k < channels; k++) {
      var plane = pixels.subarray(k * n, (k + 1) * n), h = height, w = width;
      for (var pass = 0; pass < 2; pass++) {
        var horizontal = (pass === 0) !== verticalFirst;
        if (horizontal && w !== outWidth) { plane = resamplePass(plane, h, w, outWidth, true); w = outWidth; }
        if (!horizontal && h !== outHeight) { plane = resamplePass(plane, h, w, outHeight, false); h = outHeight; }
      }
      result.set(plane, k * outHeight * outWidth);
    }
    return result;
  }

  // ------------------------------------------------------------------ the "digit" preparation

  function median(values) {
    var sorted = Array.prototype.slice.call(values).sort(function (a, b) { return a - b; });
    var mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  // (outSize x inSize) weights of a triangle filter widened when shrinking (resample_matrix).
  function resampleMatrix(inSize, outSize) {
    var scale = inSize / outSize, support = Math.max(scale, 1), rows = [];
    for (var o = 0; o < outSize; o++) {
      var centre = (o + 0.5) * scale, row = new Float64Array(inSize), total = 0;
      for (var i = 0; i < inSize; i++) {
        row[i] = Math.max(0, 1 - Math.abs(i + 0.5 - centre) / support);
        total += row[i];
      }
      for (i = 0; i < inSize; i++) row[i] /= total;
      rows.push(row);
    }
    return rows;
  }

  // prepare_digit: gray (height x width, row-major, levels 0..255) -> uint8 field.
  function prepareDigit(gray, height, width, fieldHeight, fieldWidth) {
    var r, c, border = [];
    for (c = 0; c < width; c++) border.push(gray[c], gray[(height - 1) * width + c]);
    for (r = 0; r < height; r++) border.push(gray[r * width], gray[r * width + width - 1]);
    var background = median(border), invert = background > 127.5;
    if (invert) background = 255 - background;
    var ink = new Float64Array(height * width), peak = 0;
    for (var i = 0; i < ink.length; i++) {
      var v = invert ? 255 - gray[i] : gray[i];
      ink[i] = Math.max(v - background, 0);
      peak = Math.max(peak, ink[i]);
    }
    if (peak < MIN_CONTRAST) {
      throw new Error("the image is blank: the ink differs from the background by at most " +
                      Math.round(peak) + " of 255 gray levels");
    }
    var top = height, bottom = -1, left = width, right = -1;
    for (i = 0; i < ink.length; i++) {
      ink[i] *= 255 / peak;
      if (ink[i] > INK_THRESHOLD * 255) {
        r = Math.floor(i / width); c = i % width;
        top = Math.min(top, r); bottom = Math.max(bottom, r);
        left = Math.min(left, c); right = Math.max(right, c);
      }
    }
    var h = bottom - top + 1, w = right - left + 1;
    var box = Math.max(1, roundHalfEven(Math.min(fieldHeight, fieldWidth) * 20 / 28));
    var factor = box / Math.max(h, w);
    var newH = Math.max(1, roundHalfEven(h * factor)), newW = Math.max(1, roundHalfEven(w * factor));
    var rowWeights = resampleMatrix(h, newH), colWeights = resampleMatrix(w, newW);
    // scaled = rowWeights @ crop @ colWeights^T
    var half = [];
    for (var o = 0; o < newH; o++) {
      var line = new Float64Array(w);
      for (r = 0; r < h; r++) {
        var weight = rowWeights[o][r];
        if (weight) for (c = 0; c < w; c++) line[c] += weight * ink[(top + r) * width + left + c];
      }
      half.push(line);
    }
    var scaled = [], total = 0, rowMass = new Float64Array(newH), colMass = new Float64Array(newW);
    for (o = 0; o < newH; o++) {
      var out = new Float64Array(newW);
      for (var q = 0; q < newW; q++) {
        var s = 0;
        for (c = 0; c < w; c++) s += half[o][c] * colWeights[q][c];
        out[q] = s; rowMass[o] += s; colMass[q] += s; total += s;
      }
      scaled.push(out);
    }
    var centreRow = 0, centreCol = 0;
    for (o = 0; o < newH; o++) centreRow += rowMass[o] * o;
    for (q = 0; q < newW; q++) centreCol += colMass[q] * q;
    centreRow /= total; centreCol /= total;
    var clip = function (v, lo, hi) { return Math.min(Math.max(v, lo), hi); };
    var offsetRow = clip(roundHalfEven(fieldHeight / 2 - centreRow), 0, fieldHeight - newH);
    var offsetCol = clip(roundHalfEven(fieldWidth / 2 - centreCol), 0, fieldWidth - newW);
    var field = new Uint8Array(fieldHeight * fieldWidth);
    for (o = 0; o < newH; o++) {
      for (q = 0; q < newW; q++) field[(offsetRow + o) * fieldWidth + offsetCol + q] = toByte(scaled[o][q]);
    }
    return field;
  }

  // ------------------------------------------------------------------ the whole preparation

  // images.prepare after decoding: RGBA bytes of the picture -> {pixels: uint8 (C, H, W) at
  // the training size, steps: what was done, in words}. `preprocess` is the run's record
  // (kind, channels, size, polarity); `passes` the order of Pillow's resize passes.
  function prepare(rgba, width, height, preprocess, passes) {
    var kind = preprocess.kind, channels = Number(preprocess.channels);
    var size = preprocess.size.map(Number), steps = [];
    var from = width + "\u00d7" + height, to = size[1] + "\u00d7" + size[0];
    if (kind === "digit") {
      if (channels !== 1) {
        throw new Error("the digit preparation makes grayscale images, but this model takes " +
                        channels + " channels: prepare it with resize");
      }
      steps.push("gray (ITU-R 601-2 luma)", "dark background, contrast stretched",
                 "cropped to the ink, its longer side scaled to " + Math.max(1, roundHalfEven(Math.min(size[0], size[1]) * 20 / 28)) +
                 " pixels", "centred by mass in " + to);
      return {pixels: prepareDigit(grayFromRGBA(rgba, width, height), height, width, size[0], size[1]), steps: steps};
    }
    if (kind !== "resize" && kind !== "none") throw new Error("unknown preparation '" + kind + "'; use digit, resize or none");
    var pixels = pixelsFromRGBA(rgba, width, height, channels);
    steps.push(channels === 3 ? "RGB" : "gray (ITU-R 601-2 luma)");
    if (kind === "none") {
      if (height !== size[0] || width !== size[1]) {
        throw new Error("the image is " + height + "x" + width + " pixels (height x width) but the model takes " +
                        size[0] + "x" + size[1] + "; the 'none' preparation uses images as they are: " +
                        "resize it, or prepare it with resize");
      }
      return {pixels: pixels, steps: steps};
    }
    var matched = matchPolarity(pixels, channels, height, width, preprocess.polarity);
    if (matched.inverted) {
      steps.push("inverted (its background is " + (preprocess.polarity === "dark" ? "light" : "dark") +
                 ", the training images' " + preprocess.polarity + ")");
    }
    steps.push(height === size[0] && width === size[1] ? "kept at " + to
               : "resized " + from + " \u2192 " + to + " (bilinear, antialiased, as Pillow)");
    return {pixels: resizePixels(matched.pixels, channels, height, width, size[0], size[1], passes), steps: steps};
  }

  return {grayFromRGBA: grayFromRGBA, pixelsFromRGBA: pixelsFromRGBA, borderLevel: borderLevel,
          matchPolarity: matchPolarity, resizePixels: resizePixels, prepareDigit: prepareDigit,
          prepare: prepare, roundHalfEven: roundHalfEven};
})();
