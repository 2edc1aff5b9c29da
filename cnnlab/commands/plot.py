"""PLACEHOLDER: replaced by the owner of `cnnlab plot`."""

HELP = "plot (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab plot: not built yet")
