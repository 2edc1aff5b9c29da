// cnnlab explorer: an uploaded picture prepared as `cnnlab predict` prepares it.
//
// A port of cnnlab/images.py (read_image's gray conversion and alpha handling, then
// prepare_digit): dark background, contrast stretched, cropped to the ink, the longer side
// scaled to 20/28 of the field with the same triangle filter, pasted centred by mass.
// tests/test_explorer_browser.py checks it against the Python functions.
"use strict";

var CnnlabPrepare = (function () {
  var MIN_CONTRAST = 16, INK_THRESHOLD = 0.1;

  // Python's round(): halves go to the even neighbour.
  function roundHalfEven(v) {
    var r = Math.round(v);
    return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }

  // Gray levels of RGBA bytes: Pillow's convert("L") (ITU-R 601-2 luma, integer arithmetic),
  // transparent pixels set to the background, the colour opposite the ink (_composite_alpha).
  function grayFromRGBA(rgba, width, height) {
    var n = width * height, gray = new Float64Array(n), alpha = new Float64Array(n), opaque = true, i;
    for (i = 0; i < n; i++) {
      var r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
      gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
      alpha[i] = rgba[4 * i + 3] / 255;
      if (alpha[i] !== 1) opaque = false;
    }
    if (opaque) return gray;
    var sum = 0, count = 0;
    for (i = 0; i < n; i++) if (alpha[i] > 0.5) { sum += gray[i]; count++; }
    if (!count) throw new Error("the image is fully transparent: nothing to classify");
    var background = sum / count < 128 ? 255 : 0;
    for (i = 0; i < n; i++) gray[i] = gray[i] * alpha[i] + background * (1 - alpha[i]);
    return gray;
  }

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
      for (q = 0; q < newW; q++) {
        field[(offsetRow + o) * fieldWidth + offsetCol + q] = clip(roundHalfEven(scaled[o][q]), 0, 255);
      }
    }
    return field;
  }

  return {grayFromRGBA: grayFromRGBA, prepareDigit: prepareDigit, roundHalfEven: roundHalfEven};
})();
