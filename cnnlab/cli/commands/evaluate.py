"""``cnnlab evaluate RUN_OR_CHECKPOINT``: test accuracy, loss, per-class accuracy, confusion."""

from __future__ import annotations

from cnnlab.utils.formatting import format_shape

HELP = "test accuracy, loss, per-class accuracy and confusion matrix of a trained model"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="a run folder (uses its checkpoint.npz), a checkpoint .npz file, or "
                             "a .safetensors file (from PyTorch: give --model)")
    parser.add_argument("--model", default=None, metavar="SPEC",
                        help="the architecture of a .safetensors file saved by PyTorch (mlp, "
                             "cnn, cnn-bn or a spec; its inputs are taken as x / 255, as in the "
                             "lecture notes)")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset name or folder of IDX files (default: the one it was "
                             "trained on)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder to look for (and download) datasets in")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="images per forward pass (default 256; larger batches need more memory and are no faster)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the results as JSON to FILE")


def run(args) -> int:
    from cnnlab.backend.parallel import threads_for
    from cnnlab.data import load_dataset
    from cnnlab.data.datasets import dataset_options
    from cnnlab.errors import ConfigError
    from cnnlab.training.checkpoint import load_weights, model_from_checkpoint
    from cnnlab.training.evaluation import evaluate
    from cnnlab.utils.fileio import write_json

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}: give the evaluation batch size, e.g. 256")
    checkpoint = load_weights(args.checkpoint, args.model)
    model = model_from_checkpoint(checkpoint)
    meta = checkpoint.meta
    dataset_name = args.dataset or _dataset_name(meta.get("dataset"))
    if not dataset_name:
        raise ConfigError(f"{checkpoint.path} does not say which dataset it was trained on: "
                          "give --dataset NAME")
    trained_on = meta.get("config") or {}
    options = dataset_options(trained_on) if dataset_name == _dataset_name(meta.get("dataset")) \
        else {}
    dataset = load_dataset(dataset_name, data_dir=args.data_dir or trained_on.get("data_dir"),
                           splits=("test",), **options)
    input_shape = tuple(meta.get("input_shape", (1, 28, 28)))
    if tuple(dataset.input_shape) != input_shape:
        raise ConfigError(f"dataset '{dataset_name}' has {format_shape(dataset.input_shape)} "
                          f"images (channels x height x width) but the model takes "
                          f"{format_shape(input_shape)}: choose another --dataset")
    num_classes = int(meta.get("num_classes", 10))
    classes = list(meta.get("classes") or dataset.classes)
    if len(classes) != num_classes:
        classes = [str(index) for index in range(num_classes)]
    normalization = meta.get("normalization") or {"kind": "unit"}
    result = evaluate(model, dataset.test_images, dataset.test_labels,
                      batch_size=args.batch_size, normalization=normalization.get("kind", "unit"),
                      mean=normalization.get("mean"), std=normalization.get("std"),
                      num_classes=num_classes,
                      threads=threads_for(model, input_shape, args.batch_size))
    print(format_report(result, classes, checkpoint, dataset_name))
    if args.json:
        data = result.to_dict(classes)
        data.update({"checkpoint": checkpoint.path, "dataset": dataset_name,
                     "model": meta.get("model"), "epoch": meta.get("epoch")})
        write_json(args.json, data)
        print(f"wrote {args.json}")
    return 0


def format_report(result, classes, checkpoint, dataset_name: str) -> str:
    from cnnlab.training.evaluation import format_confusion

    meta = checkpoint.meta
    correct = int(result.confusion.trace())
    epoch = f", epoch {meta['epoch']}" if meta.get("epoch") is not None else ""
    lines = [
        f"checkpoint:    {checkpoint.path} (model '{meta.get('model')}'{epoch})",
        f"dataset:       {dataset_name}, test split, {result.num_samples:,} images",
        f"test accuracy: {result.accuracy:.4f} ({correct:,} / {result.num_samples:,})",
        f"test loss:     {result.loss:.4f}",
        "",
        "per-class accuracy:",
    ]
    name_width = max(len(name) for name in classes)
    totals = result.confusion.sum(axis=1)
    for index, name in enumerate(classes):
        value = result.per_class_accuracy[index]
        text = "   n/a" if value != value else f"{value:.4f}"
        lines.append(f"  {index:>2} {name:<{name_width}}  {text}  "
                     f"({int(result.confusion[index, index]):,} / {int(totals[index]):,})")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):",
              format_confusion(result.confusion, classes)]
    return "\n".join(lines)


def _dataset_name(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("name") or value.get("source")
    return value if isinstance(value, str) and value else None

