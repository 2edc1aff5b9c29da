"""PLACEHOLDER: replaced by the owner of `cnnlab evaluate`."""

HELP = "evaluate (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab evaluate: not built yet")
