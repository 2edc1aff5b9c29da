"""PLACEHOLDER: replaced by the owner of `cnnlab bench`."""

HELP = "bench (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab bench: not built yet")
