"""PLACEHOLDER: replaced by the owner of `cnnlab data`."""

HELP = "data (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab data: not built yet")
