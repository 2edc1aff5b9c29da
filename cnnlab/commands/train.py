"""PLACEHOLDER: replaced by the owner of `cnnlab train`."""

HELP = "train (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab train: not built yet")
