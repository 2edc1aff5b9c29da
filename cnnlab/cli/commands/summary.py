"""``cnnlab summary MODEL``: each layer's output shape, parameters and FLOPs."""

from __future__ import annotations

import json
import os

from cnnlab.utils.formatting import format_shape

HELP = "print each layer's output shape, parameter count and FLOPs (a model name, spec or checkpoint)"


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="mlp, cnn, cnn-bn, a spec like 'c32k3p1-p2-fc128' "
                             "(docs/models.md), or a checkpoint .npz / run folder")
    parser.add_argument("--input", "--input-shape", dest="input_shape", default=None,
                        metavar="CxHxW",
                        help="shape of one input image, like 3x32x32 or 1,28,28 (default "
                             "1x28x28, or the checkpoint's)")
    parser.add_argument("--num-classes", type=int, default=None, metavar="K",
                        help="number of classes (default: the last size of a list like "
                             "784-500-10, the checkpoint's, or 10)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")


def parse_shape(text: str) -> tuple[int, ...]:
    """ "1,28,28" or "1x28x28" -> (1, 28, 28)."""
    from cnnlab.errors import ConfigError

    parts = [part for part in text.replace("x", ",").split(",") if part.strip()]
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        raise ConfigError(f"--input must be CxHxW like 3x32x32 (or C,H,W), got '{text}'") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"--input must be CxHxW like 3x32x32 (or F) with sizes >= 1, "
                          f"got '{text}'")
    return shape


def run(args) -> int:
    import numpy as np

    from cnnlab.models import build_model, spec_num_classes
    from cnnlab.models.summary import format_summary, summarize, totals

    looks_like_path = args.model.endswith(".npz") or os.sep in args.model
    if os.path.exists(args.model) or looks_like_path:
        from cnnlab.training.checkpoint import load_model

        model, meta = load_model(args.model)
        spec = meta.get("model")
        input_shape = tuple(meta.get("input_shape", (1, 28, 28)))
        title = f"{args.model}: model '{spec}', input {format_shape(input_shape)}"
    else:
        input_shape = parse_shape(args.input_shape) if args.input_shape else (1, 28, 28)
        num_classes = args.num_classes
        if num_classes is None:
            num_classes = spec_num_classes(args.model) or 10
        model = build_model(args.model, np.random.default_rng(0), input_shape, num_classes)
        title = f"model '{args.model}', input {format_shape(input_shape)}, {num_classes} classes"
    rows = summarize(model, input_shape)
    if args.json:
        print(json.dumps({"rows": [row.to_dict() for row in rows], "totals": totals(rows)},
                         indent=2))
    else:
        print(format_summary(rows, title=title))
    return 0

