"""The explorer in headless Chromium (Debian's chromium, driven by Playwright).

A real click on a feature-map pixel of a trained lecture CNN, then every number the panel shows
is read back and checked against NumPy and cnnlab.ops: the kernel and patch are the model's own
float32 numbers, the products exact, the sum the feature map's value to float32 rounding; the
pool window's winner, the Linear contributions and softmax, the backward pass, an uploaded
picture's preparation, the click latency, and the live view updating in place.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from cnnlab import ops
from cnnlab.explorer.data import layer_inputs, pick_test_images
from cnnlab.explorer.live import live_state, read_live, write_live
from cnnlab.explorer.page import write_explorer_page
from cnnlab.images import to_model_input
from cnnlab.ops.activation import softmax
from cnnlab.plots.runs import Run
from cnnlab.report import write_report

CHROMIUM = "/usr/bin/chromium"
FLOAT32_TOLERANCE = dict(rtol=2e-6, atol=2e-6)   # a few float32 roundings of numbers ~ 1


def _playwright():
    """sync_playwright, or fail in CI / skip elsewhere when it or Chromium is missing."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install -e '.[test]')"
    if problem is None and not Path(CHROMIUM).exists():
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the explorer's browser tests need {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield launched
        launched.close()


class Opened:
    """A page of the explorer with the errors it raised."""

    def __init__(self, browser, url: str, width: int = 1400, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.goto(url)
        self.page.wait_for_selector("#cx-panel[data-kind]")

    def click_map(self, layer: int, channel: int, i: int, j: int) -> None:
        canvas = self.page.locator(f'.cx-layer[data-layer="{layer}"] canvas[data-channel="{channel}"]')
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        height, width = self.page.evaluate("(c) => [c.height, c.width]", canvas.element_handle())
        self.page.mouse.click(box["x"] + (j + 0.5) * box["width"] / width,
                              box["y"] + (i + 0.5) * box["height"] / height)

    def close(self):
        assert self.errors == [], self.errors
        self.page.close()


READ_CONV_PANEL = """() => {
  const panel = document.getElementById("cx-panel");
  const values = (table) => Array.from(table.querySelectorAll("td")).map((td) => {
    const span = td.querySelector("[data-v]");
    return span ? Number(span.dataset.v) : null;
  });
  const one = (role) => { const n = panel.querySelector(`[data-role="${role}"]`); return n ? Number(n.dataset.v) : null; };
  const shown = Array.from(panel.querySelectorAll("[data-v]")).map((n) => [n.textContent, Number(n.dataset.v)]);
  const channels = Array.from(panel.querySelector(".cx-channels").children).map((block) => ({
    channel: Number(block.dataset.channel),
    kernel: values(block.querySelector('[data-role="kernel"]')),
    patch: values(block.querySelector('[data-role="patch"]')),
    products: values(block.querySelector('[data-role="products"]')),
    sum: Number(block.querySelector('[data-role="channel-sum"]').dataset.v)}));
  const winner = panel.querySelector('[data-role="winner"]');
  const back = panel.querySelector('[data-role="backward"]');
  const backChannels = Array.from(back.querySelector(".cx-channels").children).map((block) => ({
    share: values(block.querySelector('[data-role="dw-share"]')),
    dw: values(block.querySelector('[data-role="dw"]')),
    dx: values(block.querySelector('[data-role="dx-share"]'))}));
  return {kind: panel.dataset.kind, title: panel.querySelector("h3").textContent, channels,
          sum: one("sum"), bias: one("bias"), result: one("result"), relu: one("relu"),
          pooled: one("pooled"), shown,
          winner: winner ? [Number(winner.dataset.row), Number(winner.dataset.col)] : null,
          dy: one("dy"), dbias: one("dbias"), backChannels};
}"""


@pytest.fixture(scope="module")
def explorer(trained_run, tmp_path_factory):
    """The trained lecture CNN's explorer page, and what NumPy says about its first image."""
    out = tmp_path_factory.mktemp("explorer") / "explorer.html"
    write_explorer_page(trained_run, out)
    run = Run(trained_run)
    indices = pick_test_images(run.dataset.test_labels)
    images = run.dataset.test_images[indices]
    x = to_model_input(images, run.meta.get("normalization"))
    return {"path": out, "model": run.model, "images": images, "x": x,
            "labels": np.asarray(run.dataset.test_labels)[indices],
            "values": layer_inputs(run.model, x), "meta": run.meta, "run": trained_run}


def patch_of(x: np.ndarray, i: int, j: int, padding: int = 1, kernel: int = 3) -> np.ndarray:
    """(C, k*k) input patch of output pixel (i, j) of a stride-1 convolution; NaN on the padding."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (padding, padding), (padding, padding)),
                    constant_values=np.nan)
    return padded[:, i:i + kernel, j:j + kernel].reshape(len(x), -1)


def backward_reference(model, x: np.ndarray, target: int) -> dict[int, np.ndarray]:
    """dL/d(output of layer k) for one image and class, with cnnlab's layers one by one."""
    model.eval()
    values = [x]
    for layer in model:
        values.append(layer(values[-1]))
    _, dy = ops.cross_entropy(values[-1], np.array([target]))
    model.zero_grad()
    grads = {}
    for k in reversed(range(len(model))):
        grads[k] = dy
        dy = model[k].backward(dy)
    return grads


@pytest.mark.parametrize("layer, channel, i, j", [(3, 5, 4, 7), (0, 2, 0, 0)])
def test_a_clicked_conv_pixel_shows_the_models_own_numbers(browser, explorer, layer, channel, i, j):
    opened = Opened(browser, explorer["path"].as_uri())
    opened.click_map(layer, channel, i, j)
    panel = opened.page.evaluate(READ_CONV_PANEL)
    opened.close()
    model, values = explorer["model"], explorer["values"]
    conv = model[layer]
    assert panel["kind"] == "conv" and panel["title"].startswith(f"Layer {layer}: Conv2d")
    x = values[layer][0]
    patch = patch_of(x, i, j)
    weight = conv.weight.data[channel].reshape(len(x), -1)
    assert [block["channel"] for block in panel["channels"]] == list(range(len(x)))
    for c, block in enumerate(panel["channels"]):
        np.testing.assert_array_equal(np.array(block["kernel"], dtype=np.float32), weight[c])
        shown_patch = np.array([np.nan if v is None else v for v in block["patch"]])
        np.testing.assert_array_equal(shown_patch, patch[c])       # the model's float32 input
        products = weight[c].astype(np.float64) * patch[c]
        shown_products = np.array([np.nan if v is None else v for v in block["products"]])
        np.testing.assert_array_equal(shown_products, products)    # exact: float32 x float32
        assert block["sum"] == pytest.approx(np.nansum(products), rel=1e-12, abs=1e-15)
    expected_sum = sum(np.nansum(weight[c].astype(np.float64) * patch[c]) for c in range(len(x)))
    assert panel["sum"] == pytest.approx(expected_sum, rel=1e-12, abs=1e-15)
    assert panel["bias"] == float(conv.bias.data[channel])
    # the feature map's value as the model computed it (im2col / Winograd, float32)
    model_value = float(values[layer + 1][0, channel, i, j])
    np.testing.assert_allclose(panel["result"], model_value, **FLOAT32_TOLERANCE)
    assert panel["result"] == float(np.float32(expected_sum + panel["bias"]))
    assert panel["relu"] == max(panel["result"], 0.0)
    if padding_row := (i == 0):
        assert padding_row and all(v is None for v in panel["channels"][0]["patch"][:3])
    # every number is shown as it is, to the digits shown
    for text, value in panel["shown"]:
        assert float(text) == pytest.approx(value, rel=1e-4, abs=0), (text, value)


def test_the_pool_window_and_its_winner(browser, explorer):
    opened = Opened(browser, explorer["path"].as_uri())
    opened.click_map(5, 9, 3, 2)              # a pooled pixel of the second block
    panel = opened.page.evaluate(READ_CONV_PANEL)
    opened.close()
    relu = explorer["values"][5][0, 9]          # the pool's input (after the ReLU)
    window = relu[6:8, 4:6]
    winner = np.unravel_index(np.argmax(window), window.shape)   # first maximum, row-major
    assert panel["winner"] == [6 + int(winner[0]), 4 + int(winner[1])]
    assert panel["pooled"] == float(explorer["values"][6][0, 9, 3, 2])   # the model's own value
    np.testing.assert_allclose(panel["result"], float(explorer["values"][4][0, 9, *panel["winner"]]),
                               **FLOAT32_TOLERANCE)


def test_the_backward_view_matches_cnnlab_ops(browser, explorer):
    opened = Opened(browser, explorer["path"].as_uri())
    opened.click_map(3, 5, 4, 7)
    panel = opened.page.evaluate(READ_CONV_PANEL)
    target = opened.page.evaluate("() => window.cnnlabExplorer.state.target")
    opened.close()
    assert target == int(explorer["labels"][0])      # the true class by default
    model = explorer["model"]
    grads = backward_reference(model, explorer["x"][:1], target)
    dy = grads[3][0]
    scale = float(np.abs(dy).max())
    assert panel["dy"] == pytest.approx(float(dy[5, 4, 7]), abs=1e-5 * scale)
    assert panel["dbias"] == pytest.approx(float(model[3].bias.grad[5]), abs=1e-4 * scale)
    dweight = model[3].weight.grad[5].reshape(32, -1)
    shown_dw = np.array([block["dw"] for block in panel["backChannels"]])
    np.testing.assert_allclose(shown_dw, dweight, atol=1e-4 * np.abs(dweight).max())
    patch = patch_of(explorer["values"][3][0], 4, 7)
    share = np.array([[np.nan if v is None else v for v in block["share"]] for block in panel["backChannels"]])
    np.testing.assert_allclose(share, panel["dy"] * patch, rtol=1e-12)
    weight = model[3].weight.data[5].reshape(32, -1).astype(np.float64)
    dx = np.array([[np.nan if v is None else v for v in block["dx"]] for block in panel["backChannels"]])
    np.testing.assert_allclose(dx, np.where(np.isnan(patch), np.nan, panel["dy"] * weight), rtol=1e-12)


READ_UNIT_PANEL = """() => {
  const panel = document.getElementById("cx-panel");
  const one = (role) => Number(panel.querySelector(`[data-role="${role}"]`).dataset.v);
  const contributions = Array.from(panel.querySelectorAll("table.cx-contrib tr[data-input]")).map(
      (tr) => [Number(tr.dataset.input), Number(tr.querySelector('[data-role="contribution"]').dataset.v)]);
  const probabilities = Array.from(panel.querySelectorAll('[data-role="probability"]')).map((n) => Number(n.dataset.v));
  return {kind: panel.dataset.kind, contributions, sum: one("sum"), bias: one("bias"),
          result: one("result"), dz: one("dz"), probabilities};
}"""


def test_a_logit_shows_its_top_contributions_and_the_softmax(browser, explorer):
    opened = Opened(browser, explorer["path"].as_uri())
    opened.page.locator(".cx-bar").nth(1).click()          # the second most likely class
    panel = opened.page.evaluate(READ_UNIT_PANEL)
    unit = opened.page.evaluate("() => window.cnnlabExplorer.state.selection.unit")
    opened.close()
    model, values = explorer["model"], explorer["values"]
    a = values[7][0].astype(np.float64)
    w = model[7].weight.data[unit].astype(np.float64)
    terms = w * a
    order = np.argsort(-np.abs(terms), kind="stable")[:12]
    assert [index for index, _ in panel["contributions"]] == order.tolist()
    np.testing.assert_array_equal([value for _, value in panel["contributions"]], terms[order])
    assert panel["sum"] == pytest.approx(terms.sum(), rel=1e-12, abs=1e-12)
    logits = values[-1][0]
    np.testing.assert_allclose(panel["result"], float(logits[unit]), **FLOAT32_TOLERANCE)
    probabilities = softmax(logits.astype(np.float64)[None], axis=1)[0]
    np.testing.assert_allclose(panel["probabilities"], probabilities, rtol=1e-5, atol=1e-7)
    target = int(explorer["labels"][0])
    assert panel["dz"] == pytest.approx(probabilities[unit] - (unit == target), abs=1e-6)


READ_PLACES = """() => Array.from(document.querySelectorAll('#cx-panel [data-role="contribution-places"] .cx-mark')).map((mark) => {
  const canvas = mark.parentElement.querySelector("canvas");
  const box = canvas.getBoundingClientRect(), own = mark.getBoundingClientRect();
  // where the outline is drawn, read back as the canvas pixel under its centre
  const row = Math.floor(((own.top + own.bottom) / 2 - box.top) / box.height * canvas.height);
  const col = Math.floor(((own.left + own.right) / 2 - box.left) / box.width * canvas.width);
  return {input: Number(mark.dataset.input), rank: Number(mark.dataset.rank),
          channel: Number(mark.parentElement.dataset.channel), row, col,
          positive: mark.classList.contains("cx-mark-pos"),
          cell: [own.width / box.width * canvas.width, own.height / box.height * canvas.height]};
})"""


def expected_places(weight_row: np.ndarray, a: np.ndarray, shape, k: int = 12) -> list[dict]:
    """The top-k inputs by |w * a| (stable order, as the page sorts) and where they are on the
    (C, H, W) map the Linear's input was flattened from."""
    terms = weight_row.astype(np.float64) * a.astype(np.float64)
    order = np.argsort(-np.abs(terms), kind="stable")[:k]
    places = []
    for rank, index in enumerate(order):
        channel, row, col = np.unravel_index(index, shape)
        places.append({"input": int(index), "rank": rank + 1, "channel": int(channel), "row": int(row),
                       "col": int(col), "positive": bool(terms[index] >= 0)})
    return places


def check_places(shown: list[dict], expected: list[dict]) -> None:
    assert len(shown) == len(expected)
    for mark in shown:
        np.testing.assert_allclose(mark.pop("cell"), [1, 1], atol=0.02)    # one pixel outlined
    assert sorted(shown, key=lambda mark: mark["rank"]) == expected


def test_a_logits_top_contributions_are_outlined_where_they_sit_on_the_feature_map(browser, explorer):
    opened = Opened(browser, explorer["path"].as_uri())
    opened.page.locator(".cx-bar").nth(2).click()
    unit = opened.page.evaluate("() => window.cnnlabExplorer.state.selection.unit")
    shown = opened.page.evaluate(READ_PLACES)
    captions = opened.page.locator('#cx-panel [data-role="contribution-places"] h4').inner_text()
    opened.close()
    model, values = explorer["model"], explorer["values"]
    assert values[6].shape[1:] == (64, 7, 7)                    # the second block's pooled maps
    expected = expected_places(model[7].weight.data[unit], values[7][0], (64, 7, 7))
    check_places(shown, expected)
    assert "output of layer 5 (MaxPool2d" in captions


def test_an_mlps_top_contributions_are_outlined_on_the_input_image(browser, rng, tmp_path):
    from cnnlab.explorer.data import explorer_payload
    from cnnlab.explorer.page import explorer_section
    from cnnlab.models import build_model

    model = build_model("mlp", rng)
    images = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    meta = {"normalization": {"kind": "unit"}, "num_classes": 10}
    page = tmp_path / "mlp.html"
    page.write_text("<!DOCTYPE html><html><body>" + explorer_section(
        explorer_payload(model, meta, images, [3, 5])) + "</body></html>", encoding="utf-8")
    opened = Opened(browser, page.as_uri())
    first = opened.page.locator('.cx-layer[data-layer="1"] .cx-unit[data-unit="17"]')
    first.scroll_into_view_if_needed()
    first.click()                                                # hidden unit 17 of Linear(784, ...)
    shown = opened.page.evaluate(READ_PLACES)
    opened.close()
    x = to_model_input(images[:1], meta["normalization"])
    check_places(shown, expected_places(model[1].weight.data[17], x[0].ravel(), (1, 28, 28)))


def test_a_click_takes_under_100_ms_on_the_lecture_cnn(browser, explorer):
    opened = Opened(browser, explorer["path"].as_uri())
    timings = []
    for layer, channel, i, j in [(3, 5, 4, 7), (0, 3, 10, 10), (5, 60, 2, 2), (3, 63, 13, 13), (0, 31, 27, 0)] * 2:
        canvas = opened.page.locator(f'.cx-layer[data-layer="{layer}"] canvas[data-channel="{channel}"]')
        timings.append(opened.page.evaluate("""([canvas, i, j]) => {
          const rect = canvas.getBoundingClientRect();
          const started = performance.now();
          canvas.dispatchEvent(new MouseEvent("click", {bubbles: true,
              clientX: rect.left + (j + 0.5) * rect.width / canvas.width,
              clientY: rect.top + (i + 0.5) * rect.height / canvas.height}));
          document.getElementById("cx-panel").getBoundingClientRect();   // layout included
          return performance.now() - started;
        }""", [canvas.element_handle(), i, j]))
    # a logit: its 12 largest contributions of 3136, outlined on the 64 pooled maps
    for bar in [0, 3, 9, 1, 5] * 2:
        timings.append(opened.page.evaluate("""(bar) => {
          const started = performance.now();
          bar.dispatchEvent(new MouseEvent("click", {bubbles: true}));
          document.getElementById("cx-panel").getBoundingClientRect();
          return performance.now() - started;
        }""", opened.page.locator(".cx-bar").nth(bar).element_handle()))
    assert opened.page.locator('#cx-panel [data-role="contribution-places"] .cx-mark').count() == 12
    opened.close()
    print(f"click latency ms: conv pixels median {np.median(timings[:10]):.1f}, max {max(timings[:10]):.1f}; "
          f"logits median {np.median(timings[10:]):.1f}, max {max(timings[10:]):.1f}")
    assert np.median(timings[:10]) < 100 and np.median(timings[10:]) < 100   # the issue: under 100 ms


def test_the_page_loads_nothing_from_the_network(browser, explorer):
    assert explorer["path"].stat().st_size < 10 * 1024 * 1024
    opened = Opened(browser, explorer["path"].as_uri())
    opened.page.wait_for_timeout(300)
    opened.close()
    assert all(url.startswith(("file://", "data:")) for url in opened.requests), opened.requests


def rgb_folder_dataset(folder: Path, rng, per_class: int = 24) -> Path:
    """A folder dataset of 32x32 RGB PNGs: a coloured square on a light, noisy page."""
    from PIL import Image

    colours = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (200, 40, 40)}
    for split, count in (("train", per_class), ("test", per_class // 4)):
        for name, colour in colours.items():
            (folder / split / name).mkdir(parents=True)
            for index in range(count):
                image = rng.integers(215, 250, (32, 32, 3), dtype=np.uint8)
                row, column = rng.integers(2, 20, 2)
                image[row:row + 10, column:column + 10] = np.clip(
                    np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
                Image.fromarray(image).save(folder / split / name / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """The lecture CNN trained one epoch on 32x32 RGB pictures of an image folder."""
    from cnnlab.cli import main

    base = tmp_path_factory.mktemp("rgb")
    data = rgb_folder_dataset(base / "data", np.random.default_rng(0))
    assert main(["train", "--model", "cnn", "--dataset", str(data), "--epochs", "1",
                 "--run-dir", str(base / "run"), "--no-progress", "--no-report", "--seed", "0"]) == 0
    return base / "run"


def upload_pictures(folder: Path) -> dict[str, Path]:
    """Pictures of known content: light and dark backgrounds, shrunk and enlarged, odd sizes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(7)
    drawn = Image.new("RGB", (90, 70), (235, 230, 220))       # dark, coloured ink on a light page
    draw = ImageDraw.Draw(drawn)
    draw.ellipse((20, 12, 52, 60), outline=(20, 130, 40), width=6)
    draw.line((48, 20, 70, 8), fill=(140, 40, 40), width=4)
    pictures = {
        "drawn.png": drawn,
        "noise.png": Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)),
        "small-gray.png": Image.fromarray(rng.integers(0, 120, (15, 20), dtype=np.uint8)),
        "large.png": Image.fromarray(rng.integers(0, 256, (301, 233, 3), dtype=np.uint8)),
    }
    paths = {}
    for name, picture in pictures.items():
        paths[name] = folder / name
        picture.save(paths[name])
    return paths


def upload(opened: Opened, path: Path) -> dict:
    """Give the page's file input ``path``; what the page prepared and shows."""
    page = opened.page
    page.set_input_files("input.cx-upload", str(path))
    page.wait_for_function("(name) => window.cnnlabExplorer.state.item.name === name", arg=path.name)
    return page.evaluate("""() => {
      const state = window.cnnlabExplorer.state;
      const caption = Array.from(document.querySelectorAll(".cx-prediction .cx-caption b")).map((b) => b.textContent);
      return {pixels: Array.from(state.item.pixels), x: Array.from(state.values[0].data),
              logits: Array.from(state.values.at(-1).data), predicted: caption[1],
              bars: Array.from(document.querySelectorAll(".cx-bar")).map((bar) => [
                  bar.querySelector(".cx-bar-name").textContent, bar.querySelector(".cx-bar-value").textContent]),
              note: document.querySelector(".cx-top .cx-note").textContent};
    }""")


def predict_top(run: Path, path: Path, capsys, *options) -> list[dict]:
    from cnnlab.cli import main

    capsys.readouterr()
    assert main(["predict", str(run), str(path), "--json", "--top-k", "10", *options]) == 0
    return json.loads(capsys.readouterr().out)[0]["top"]


@pytest.mark.parametrize("which", ["fashion", "rgb"])
def test_an_upload_is_prepared_and_predicted_as_cnnlab_predict_does(browser, explorer, rgb_run, which,
                                                                     tmp_path, capsys):
    """Fashion-MNIST-like (gray, resized, inverted to a dark background) and RGB runs: the
    page's uint8 pixels and float32 input equal cnnlab's, bit for bit; the displayed class and
    probabilities are predict's."""
    from cnnlab.images import default_preprocess, load_inputs

    run = explorer["run"] if which == "fashion" else rgb_run
    page_path = explorer["path"] if which == "fashion" else write_explorer_page(rgb_run, tmp_path / "rgb.html")
    meta = Run(run).meta
    preprocess = default_preprocess(meta)
    assert preprocess["kind"] == "resize" and preprocess["channels"] == (1 if which == "fashion" else 3)
    opened = Opened(browser, page_path.as_uri())
    for name, path in upload_pictures(tmp_path).items():
        shown = upload(opened, path)
        expected = load_inputs([path], preprocess=preprocess)[0].pixels
        np.testing.assert_array_equal(np.array(shown["pixels"], dtype=np.uint8).reshape(expected.shape),
                                      expected, err_msg=name)
        x = to_model_input(expected[None], preprocess["normalization"])
        np.testing.assert_array_equal(np.array(shown["x"], dtype=np.float32), x.ravel(), err_msg=name)
        top = predict_top(run, path, capsys)
        assert shown["predicted"] == top[0]["name"], name
        assert shown["bars"] == [[entry["name"], f"{100 * entry['probability']:.1f}%"] for entry in top], name
        probabilities = softmax(np.array(shown["logits"], dtype=np.float64)[None], axis=1)[0]
        np.testing.assert_allclose(probabilities[[entry["class"] for entry in top]],
                                   [entry["probability"] for entry in top], atol=1e-5, err_msg=name)
    assert "resized 233\u00d7301 \u2192 " in shown["note"]
    if which == "fashion":
        # the light page of drawn.png is inverted to the training images' dark background
        assert "inverted" in upload(opened, tmp_path / "drawn.png")["note"]
    opened.close()


def test_the_preparation_menu_is_predicts_prepare_option(browser, explorer, tmp_path, capsys):
    from cnnlab.images import default_preprocess, load_inputs

    paths = upload_pictures(tmp_path)
    opened = Opened(browser, explorer["path"].as_uri())
    assert opened.page.input_value("select.cx-prepare") == "resize"       # as in training
    upload(opened, paths["drawn.png"])
    opened.page.select_option("select.cx-prepare", "digit")
    opened.page.wait_for_function("() => document.querySelector('.cx-top .cx-note').textContent.includes('--prepare digit')")
    pixels = opened.page.evaluate("() => Array.from(window.cnnlabExplorer.state.item.pixels)")
    digit = {**default_preprocess(explorer["meta"]), "kind": "digit"}
    expected = load_inputs([paths["drawn.png"]], preprocess=digit)[0].pixels
    shown = np.array(pixels, dtype=np.int64).reshape(expected.shape)
    # the digit preparation's float triangle filter, in another order of float64 additions
    assert np.abs(shown - expected).max() <= 1 and (shown != expected).mean() < 0.01
    # "as it is" needs the training size: the page says so as predict does
    opened.page.select_option("select.cx-prepare", "none")
    opened.page.wait_for_function("() => document.querySelector('.cx-top .cx-note').dataset.state === 'error'")
    assert "the model takes 28x28" in opened.page.inner_text(".cx-top .cx-note")
    from cnnlab.cli import main

    assert main(["predict", str(explorer["run"]), str(paths["drawn.png"]), "--prepare", "none"]) == 2
    assert "the model takes 28x28" in capsys.readouterr().err
    opened.close()


def test_resize_and_polarity_match_pillow_and_numpy(browser, explorer, rng):
    from cnnlab.images import border_level, match_polarity, resize_pixels

    opened = Opened(browser, explorer["path"].as_uri())
    for channels, (height, width), (out_height, out_width) in [
            (1, (28, 28), (28, 28)), (1, (7, 5), (28, 28)), (3, (64, 48), (32, 32)), (3, (33, 100), (32, 32)),
            (1, (1000, 3), (28, 28)), (1, (3, 1000), (28, 28)), (3, (29, 31), (28, 27)), (1, (2, 2), (1, 1)),
            (3, (40, 28), (28, 28)), (1, (28, 40), (28, 28))]:
        pixels = rng.integers(0, 256, (channels, height, width), dtype=np.uint8)
        ours = opened.page.evaluate(
            "(a) => Array.from(CnnlabPrepare.resizePixels(Uint8Array.from(a[0]), a[1], a[2], a[3], a[4], a[5],"
            " window.cnnlabExplorer.data.preparation.resize_passes))",
            [pixels.ravel().tolist(), channels, height, width, out_height, out_width])
        expected = resize_pixels(pixels, (out_height, out_width))
        np.testing.assert_array_equal(np.array(ours, dtype=np.uint8).reshape(expected.shape), expected)
        level = opened.page.evaluate("(a) => CnnlabPrepare.borderLevel(Uint8Array.from(a[0]), a[1], a[2], a[3])",
                                     [pixels.ravel().tolist(), channels, height, width])
        assert level == float(border_level(pixels[None])[0])
    # a border whose float32 median is exactly mid-gray, 127.5, which is not light
    tie = np.zeros((3, 4, 4), np.uint8)
    ring = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1), (3, 0), (2, 0), (1, 0)]
    for n, (r, c) in enumerate(ring):
        tie[:, r, c] = (127, 127, 128) if n % 2 else (127, 128, 128)
    assert border_level(tie[None])[0] == 127.5
    for polarity in ("dark", "light"):
        inverted = opened.page.evaluate(
            "(a) => CnnlabPrepare.matchPolarity(Uint8Array.from(a[0]), 3, 4, 4, a[1]).inverted",
            [tie.ravel().tolist(), polarity])
        assert inverted == (not np.array_equal(match_polarity(tie, polarity), tie)) == (polarity == "light")
    opened.close()


def test_a_semi_transparent_upload_is_within_one_level(browser, rgb_run, explorer, tmp_path):
    """A 2-D canvas stores premultiplied alpha: a semi-transparent pixel comes back within one
    level of the file's, which the background blend keeps within one level (docs/explorer.md)."""
    from PIL import Image

    from cnnlab.images import default_preprocess, load_inputs

    rgba = np.random.default_rng(3).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    path = tmp_path / "glass.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for page_path, run in ((explorer["path"], explorer["run"]),
                           (write_explorer_page(rgb_run, tmp_path / "rgb.html"), rgb_run)):
        opened = Opened(browser, page_path.as_uri())
        shown = upload(opened, path)
        opened.close()
        expected = load_inputs([path], preprocess=default_preprocess(Run(run).meta))[0].pixels
        difference = np.abs(np.array(shown["pixels"]).reshape(expected.shape) - expected.astype(np.int64))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.2


def test_prepare_js_matches_prepare_digit_and_pillows_gray(browser, explorer, rng):
    from PIL import Image

    from cnnlab.images import prepare_digit

    opened = Opened(browser, explorer["path"].as_uri())
    rgba = rng.integers(0, 256, (13, 17, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    gray = opened.page.evaluate("(args) => Array.from(CnnlabPrepare.grayFromRGBA(args[0], args[2], args[1]))",
                                [rgba.ravel().tolist(), 13, 17])
    expected = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"), dtype=np.float64)
    np.testing.assert_array_equal(np.array(gray).reshape(13, 17), expected)
    for shape, field in [((50, 37), (28, 28)), ((64, 64), (32, 32))]:
        image = np.full(shape, 200.0)
        image[8:-10, 6:-9] = rng.uniform(0, 90, (shape[0] - 18, shape[1] - 15))
        ours = opened.page.evaluate("(a) => Array.from(CnnlabPrepare.prepareDigit(a[0], a[1], a[2], a[3], a[4]))",
                                    [image.ravel().tolist(), shape[0], shape[1], field[0], field[1]])
        reference = prepare_digit(image, field).astype(np.int64)
        difference = np.abs(np.array(ours).reshape(field) - reference)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    opened.close()


def test_the_live_view_updates_in_place_keeping_the_place(browser, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "finished": False}))
    report = write_report(run)
    model_run = Run(run)
    state = read_live(run)
    write_live(run / "live.js", {**state, "status": "running", "epoch": 1, "time": time.time()})
    opened = Opened(browser, report.as_uri(), height=900)
    page = opened.page
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.epoch === '1'", timeout=10000)
    opened.click_map(3, 7, 5, 5)
    before = page.evaluate("() => document.getElementById('cx-panel').querySelector('h3').textContent")
    page.evaluate("() => window.scrollTo(0, 1500)")
    # the trainer finishes another epoch: a new live.js with new weights' maps and a new record
    epoch2 = live_state(model_run.model, model_run.dataset.test_images[0], model_run.meta["normalization"],
                        model_run.metrics + [{"kind": "epoch", "epoch": 2, "step": 9, "test_loss": 0.4,
                                              "test_accuracy": 0.85}], "running", 3)
    write_live(run / "live.js", epoch2)
    started = time.monotonic()
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.epoch === '2'", timeout=8000)
    seconds = time.monotonic() - started
    assert seconds < 5
    assert page.evaluate("() => window.scrollY") == 1500
    assert page.evaluate("() => document.getElementById('cx-panel').querySelector('h3').textContent") == before
    assert "test accuracy 0.8500" in page.inner_text(".lv-status")
    write_live(run / "live.js", {**epoch2, "status": "finished", "time": time.time()})
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.status === 'finished'", timeout=8000)
    assert page.locator(".lv-reload").is_visible()
    page.screenshot(path=str(tmp_path / "live.png"))
    opened.close()


def test_a_trainer_that_went_silent_is_flagged_and_the_flag_goes_when_it_speaks(browser, trained_run, tmp_path):
    """A trainer killed without a word (SIGKILL) leaves live.js "running": after the quiet
    time (60 s; 1.5 s here) the headline says so, and a new live.js clears it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "finished": False}))
    report = write_report(run)
    assert 'data-stale-ms="60000"' in report.read_text(encoding="utf-8")
    report.write_text(report.read_text(encoding="utf-8").replace('data-stale-ms="60000"', 'data-stale-ms="1500"'),
                      encoding="utf-8")
    state = read_live(run)
    write_live(run / "live.js", {**state, "status": "running", "epoch": 1, "time": time.time()})
    opened = Opened(browser, report.as_uri())
    page = opened.page
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.stale === 'true'", timeout=10000)
    assert "no news from the trainer for" in page.inner_text(".lv-status")
    assert page.get_attribute("#cnnlab-live", "data-status") == "running"
    write_live(run / "live.js", {**state, "status": "running", "epoch": 2, "time": time.time()})
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.epoch === '2'", timeout=8000)
    page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.stale === 'false'", timeout=8000)
    assert "no news" not in page.inner_text(".lv-status")
    opened.close()


def test_screenshot_after_clicks(browser, explorer, tmp_path):
    """Screenshots for a person to look at (also kept in $CNNLAB_SCREENSHOTS when set)."""
    opened = Opened(browser, explorer["path"].as_uri(), width=1400, height=1100)
    opened.click_map(3, 5, 4, 7)
    folder = Path(os.environ.get("CNNLAB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    opened.page.screenshot(path=str(folder / "explorer-conv.png"))
    opened.page.locator(".cx-bar").first.click()
    opened.page.screenshot(path=str(folder / "explorer-logit.png"))
    opened.close()
    for name in ("explorer-conv.png", "explorer-logit.png"):
        data = (folder / name).read_bytes()
        width, height = struct.unpack(">II", data[16:24])
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) == (1400, 1100)
        assert len(data) > 60_000                         # a page of maps, not a blank one


def every_kind_of_layer(rng):
    """Colour 20x24 inputs through every layer kind the explorer shows, with odd arguments."""
    from cnnlab.nn import layers as nn
    from cnnlab.nn.module import Sequential

    model = Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, rng=rng), nn.Tanh(),
        nn.AvgPool2d(2, padding=1), nn.Conv2d(6, 5, (2, 3), padding="same", bias=False, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Dropout(0.3, rng=rng), nn.Linear(150, 7, rng=rng),
        nn.Sigmoid(), nn.Linear(7, 4, rng=rng))
    batch_norm = model[1]
    batch_norm.running_mean[...] = rng.normal(0, 0.3, 4)
    batch_norm.running_var[...] = rng.uniform(0.5, 2, 4)
    batch_norm.weight.data[...] = rng.uniform(0.5, 1.5, 4)
    batch_norm.bias.data[...] = rng.normal(0, 0.2, 4)
    return model


def test_every_layer_kind_and_colour_inputs_of_any_size(browser, rng, tmp_path):
    from cnnlab.explorer.data import explorer_payload
    from cnnlab.explorer.page import explorer_section

    model = every_kind_of_layer(rng)
    images = rng.integers(0, 256, (3, 3, 20, 24), dtype=np.uint8)
    x = (images / np.float32(255)).astype(np.float32)
    # a class name (from the user's folder) that would end a <script> element, left as it is
    meta = {"normalization": {"kind": "unit"}, "num_classes": 4,
            "classes": ["</script><!-- a", "b & <b>", "c", "d"]}
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html><body>" + explorer_section(
        explorer_payload(model, meta, images, [0, 1, 2], x=x)) + "</body></html>", encoding="utf-8")
    values = layer_inputs(model, x)
    opened = Opened(browser, page.as_uri())
    names = opened.page.locator(".cx-target-select option").all_inner_texts()
    assert names[:2] == ["0 </script><!-- a", "1 b & <b>"]
    computed = opened.page.evaluate("""() => window.cnnlabExplorer.state.values.map(
        (t) => ({shape: t.shape, data: Array.from(t.data)}))""")
    for k, (ours, theirs) in enumerate(zip(computed, values)):
        assert ours["shape"] == list(theirs.shape[1:]), k
        np.testing.assert_allclose(np.array(ours["data"]), theirs[0].ravel(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"input of layer {k}")
    # the backward pass through every layer, against the layers' own backward
    target = opened.page.evaluate("() => window.cnnlabExplorer.state.target")
    grads = opened.page.evaluate("() => window.cnnlabExplorer.state.backward.grads.map((g) => Array.from(g.data))")
    reference = backward_reference(model, x[:1], target)
    for k, ours in enumerate(grads):
        theirs = reference[k][0].ravel()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(np.abs(theirs).max()),
                                   err_msg=f"dL/d(output of layer {k})")
    for layer, channel, i, j in [(0, 3, 0, 11), (3, 5, 4, 2), (6, 1, 2, 2)]:
        opened.click_map(layer, channel, i, j)
        panel = opened.page.evaluate(READ_CONV_PANEL)
        np.testing.assert_allclose(panel["result"], float(values[layer + 1][0, channel, i, j]),
                                   **FLOAT32_TOLERANCE)
        groups = model[layer].groups
        assert len(panel["channels"]) == model[layer].in_channels // groups
    # the second conv's output channel 5 reads input channels 2 and 3 (its group)
    opened.click_map(3, 5, 4, 2)
    assert [block["channel"] for block in opened.page.evaluate(READ_CONV_PANEL)["channels"]] == [2, 3]
    opened.page.locator(".cx-bar").first.click()
    unit = opened.page.evaluate(READ_UNIT_PANEL)
    np.testing.assert_allclose(unit["result"], float(values[-1][0, opened.page.evaluate(
        "() => window.cnnlabExplorer.state.selection.unit")]), **FLOAT32_TOLERANCE)
    opened.close()


@pytest.mark.slow
def test_an_open_report_follows_a_real_training_run_to_its_end(browser, data_root, tmp_path):
    import subprocess
    import sys

    from conftest import make_tiny_dataset

    data = make_tiny_dataset(data_root, tmp_path / "data", train=2048, test=200)
    run = tmp_path / "run"
    trainer = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "--model", "cnn",
                                "--dataset", str(data), "--epochs", "4", "--log-every", "2",
                                "--run-dir", str(run), "--no-progress", "--threads", "1"],
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run / "report.html").exists():
            assert trainer.poll() is None, "training ended before it wrote report.html"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        opened = Opened(browser, (run / "report.html").as_uri(), height=900)
        page = opened.page
        page.evaluate("() => { window.sameDocument = true; window.scrollTo(0, 600); }")
        epochs = set()
        while page.get_attribute("#cnnlab-live", "data-status") != "finished":
            epochs.add(page.get_attribute("#cnnlab-live", "data-epoch"))
            assert time.monotonic() < deadline, f"the page never showed the end (saw epochs {epochs})"
            page.wait_for_timeout(250)
        assert page.get_attribute("#cnnlab-live", "data-epoch") == "4"
        assert page.evaluate("() => window.sameDocument === true && window.scrollY") == 600
        assert epochs - {None, "0"}, "no epoch was shown while the run went on"
        opened.close()
    finally:
        trainer.wait(timeout=300)
    assert trainer.returncode == 0


HELD_TRAINER = '''
import os, signal, sys, time
from pathlib import Path
from cnnlab import train

go = Path(sys.argv[1])
original = train.Trainer._forward_backward

def step(self, x, y, stopping):
    loss, correct, stop = original(self, x, y, stopping)
    if self.progress.epochs_done >= 1 and self.progress.batch_in_epoch == 2:
        while not go.exists():          # epoch 1 is on the page: the test says when to go on
            time.sleep(0.05)
        if os.environ["HOW"] == "nan":
            loss = float("nan")
    return loss, correct, stop

train.Trainer._forward_backward = step
from cnnlab.cli import main
sys.exit(main(sys.argv[2:]))
'''


@pytest.mark.parametrize("how", ["nan", "sigint"])
def test_an_open_report_shows_how_a_run_that_did_not_finish_ended(browser, data_root, tmp_path, how):
    """A real trainer stopped in its second epoch (its loss became NaN, or Ctrl-C): the open
    report turns from "training" to "failed" / "interrupted" with the reason, in place."""
    import signal
    import subprocess
    import sys

    from conftest import make_tiny_dataset

    data = make_tiny_dataset(data_root, tmp_path / "data", train=512, test=128)
    run, go = tmp_path / "run", tmp_path / "go"
    (tmp_path / "held.py").write_text(HELD_TRAINER)
    trainer = subprocess.Popen(
        [sys.executable, str(tmp_path / "held.py"), str(go), "train", "--model", "c2k3-p2",
         "--dataset", str(data), "--epochs", "3", "--log-every", "1", "--run-dir", str(run),
         "--no-progress", "--threads", "1"], env={**os.environ, "HOW": how},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "report.html").exists():
            assert trainer.poll() is None, trainer.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        opened = Opened(browser, (run / "report.html").as_uri(), height=900)
        page = opened.page
        page.wait_for_function("() => document.getElementById('cnnlab-live').dataset.epoch === '1'", timeout=20000)
        assert page.get_attribute("#cnnlab-live", "data-status") == "running"
        page.evaluate("() => { window.sameDocument = true; window.scrollTo(0, 300); }")
        if how == "sigint":
            trainer.send_signal(signal.SIGINT)
        go.touch()
        expected = "failed" if how == "nan" else "interrupted"
        started = time.monotonic()
        page.wait_for_function(f"() => document.getElementById('cnnlab-live').dataset.status === '{expected}'",
                               timeout=15000)
        print(f"{how}: the page showed '{expected}' {time.monotonic() - started:.1f} s after the trainer went on")
        reason = page.inner_text(".lv-reason")
        headline = page.inner_text(".lv-status")
        assert page.locator(".lv-reason").is_visible()
        assert headline.startswith(f"{expected}: epoch 1 of 3 done"), headline
        if how == "nan":
            assert reason.startswith("the loss became nan at epoch 2, step "), reason
        else:
            assert reason.startswith("stopped by SIGINT at epoch 2") and "--resume" in reason, reason
        assert page.evaluate("() => window.sameDocument === true && window.scrollY") == 300
        assert not page.locator(".lv-reload").is_visible()     # nothing newer to reload
        folder = Path(os.environ.get("CNNLAB_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        page.evaluate("() => window.scrollTo(0, document.getElementById('live').offsetTop)")
        page.screenshot(path=str(folder / f"live-{expected}.png"))
        opened.close()
    finally:
        go.touch()
        trainer.wait(timeout=120)
    assert trainer.returncode == (2 if how == "nan" else 130)
