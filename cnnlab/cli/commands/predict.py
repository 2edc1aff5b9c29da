"""``cnnlab predict CHECKPOINT IMAGE...``: the most likely classes of each image."""

from __future__ import annotations

HELP = "classify images (PNG, JPEG, BMP, WebP, IDX) with a trained model: top-k classes and probabilities"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a checkpoint .npz file, a run folder or a .safetensors file")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files: PNG/JPEG/BMP/WebP/... or IDX files, each prepared as "
                             "the model's training images were (the checkpoint records how)")
    parser.add_argument("--prepare", choices=("digit", "resize", "none"), default=None,
                        help="override how images are prepared: digit (MNIST-style: dark "
                             "background, 20-pixel box, centred by mass), resize (the training "
                             "channels, polarity and size), none (channels only; the image must "
                             "have the training size). Default: as in training")
    parser.add_argument("--top-k", type=int, default=3, metavar="K",
                        help="how many classes to show per image (default 3)")
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="the architecture of a .safetensors file saved by PyTorch")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import json

    import numpy as np

    from cnnlab.data.images import default_preprocess, load_inputs, to_model_input
    from cnnlab.errors import ConfigError
    from cnnlab.ops.activation import softmax
    from cnnlab.training.checkpoint import load_weights, model_from_checkpoint
    from cnnlab.training.evaluation import predict_logits

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    checkpoint = load_weights(args.checkpoint, args.model)
    model, meta = model_from_checkpoint(checkpoint), checkpoint.meta
    input_shape = tuple(meta.get("input_shape", (1, 28, 28)))
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ConfigError(f"this model takes inputs of shape {input_shape}; predict reads "
                          "grayscale or RGB images (C, H, W)")
    num_classes = int(meta.get("num_classes", 10))
    classes = list(meta.get("classes") or [])
    if len(classes) != num_classes:
        classes = [str(index) for index in range(num_classes)]
    preprocess = dict(default_preprocess(meta))
    if args.prepare is not None:
        preprocess["kind"] = args.prepare
    inputs = load_inputs(args.images, preprocess=preprocess)
    pixels = np.stack([item.pixels for item in inputs])
    x = to_model_input(pixels, preprocess.get("normalization") or meta.get("normalization"))
    probabilities = softmax(predict_logits(model, x).astype(np.float64), axis=1)
    top_k = min(args.top_k, num_classes)
    results = []
    for item, row in zip(inputs, probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        results.append({"image": item.name, "top": [
            {"class": int(index), "name": classes[index], "probability": float(row[index])}
            for index in order]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_predictions(results))
    return 0


def format_predictions(results: list[dict]) -> str:
    lines = []
    for result in results:
        best = result["top"][0]
        lines.append(f"{result['image']}: {best['name']} ({best['probability']:.1%})")
        for entry in result["top"]:
            bar = "#" * int(round(entry["probability"] * 20))
            lines.append(f"  {entry['class']:>3} {entry['name']:<14} "
                         f"{entry['probability']:7.2%}  {bar}")
    return "\n".join(lines)
