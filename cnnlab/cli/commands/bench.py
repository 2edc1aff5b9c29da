"""`cnnlab bench`: cnnlab and PyTorch side by side on this CPU."""

from __future__ import annotations

HELP = "benchmark cnnlab against PyTorch (ops, training steps, an epoch, memory)"


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, batch 128 only, a short epoch (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    parser.add_argument("--threads", type=int, help="threads for PyTorch (default: all cores; "
                        "set OPENBLAS_NUM_THREADS to match for NumPy)")
    parser.add_argument("--repeats", type=int, help="timed repeats per figure (default 15, quick 5)")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes for throughput (default 64,128,256)")
    parser.add_argument("--epoch-images", type=int, help="images in the timed epoch (default 60000)")
    parser.add_argument("--no-torch", action="store_true", help="measure cnnlab alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory training run")
    parser.add_argument("--data-dir", help="where Fashion-MNIST is, for the memory run")
    parser.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                        help="torch: time cnnlab's torch backend against a plain PyTorch loop "
                        "(epochs of cnn on Fashion-MNIST, batch 128) instead")
    parser.add_argument("--device", default="auto", help="--backend torch: auto, cpu, cuda, "
                        "cuda:N or mps (default auto)")


def run(args) -> int:
    from cnnlab.errors import ConfigError
    from cnnlab.tools.bench import format_results, run_benchmark

    batch_sizes = None
    if args.batch_sizes:
        try:
            batch_sizes = tuple(int(size) for size in args.batch_sizes.split(","))
        except ValueError:
            raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: give whole numbers separated by commas, "
                              "e.g. 64,128") from None
    for name, value in (("--threads", args.threads), ("--repeats", args.repeats),
                        ("--epoch-images", args.epoch_images), *(("--batch-sizes", b) for b in batch_sizes or ())):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value}")
    if args.backend == "torch":
        return _run_torch_backend(args)
    from cnnlab.backend.workspace import keep_freed_memory

    keep_freed_memory()  # as `cnnlab train` does, so the steps timed are the ones it runs
    results = run_benchmark(quick=args.quick, threads=args.threads, with_torch=not args.no_torch,
                            repeats=args.repeats, batch_sizes=batch_sizes, epoch_images=args.epoch_images,
                            data_dir=args.data_dir, measure_memory=not args.no_memory)
    return _show(format_results(results), results, args.json)


def _show(text: str, results: dict, json_path: str | None) -> int:
    from cnnlab.tools.bench import save_results

    print()
    print(text)
    if json_path:
        save_results(json_path, results)
        print(f"\nwrote {json_path}")
    return 0


def _run_torch_backend(args) -> int:
    from cnnlab.torch_backend import require_torch
    from cnnlab.training.config import _check_device

    require_torch("cnnlab bench --backend torch")
    _check_device(args.device)
    from cnnlab.torch_backend.bench import bench_torch_backend, format_torch_backend

    results = bench_torch_backend(device=args.device, images=args.epoch_images,
                                  repeats=args.repeats or 3, data_dir=args.data_dir)
    return _show(format_torch_backend(results), results, args.json)
