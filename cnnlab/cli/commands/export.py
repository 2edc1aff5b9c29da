"""``cnnlab export RUN --format onnx|safetensors``: the model as a file other tools open."""

from __future__ import annotations

HELP = "write a trained model as ONNX (onnxruntime, Netron) or safetensors (PyTorch)"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="a run folder, a checkpoint .npz or a .safetensors file")
    parser.add_argument("--format", required=True, choices=("onnx", "safetensors"),
                        help="onnx: the network as a graph (pip install 'cnnlab[onnx]'); "
                             "safetensors: the weights with PyTorch's state_dict keys "
                             "(pip install 'cnnlab[safetensors]')")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="the file to write (default RUN/model.onnx or .safetensors, or "
                             "the checkpoint's name with the new suffix)")
    parser.add_argument("--model", metavar="SPEC", default=None,
                        help="the architecture of a .safetensors file saved by PyTorch "
                             "(mlp, cnn, cnn-bn or a spec)")
    parser.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX operator set (default 17)")


def run(args) -> int:
    from cnnlab.export import export

    result = export(args.checkpoint, args.format, out=args.out, model=args.model,
                    opset=args.opset)
    print(f"wrote {result.path}: {result.description}")
    return 0
