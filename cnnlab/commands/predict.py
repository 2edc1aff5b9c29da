"""PLACEHOLDER: replaced by the owner of `cnnlab predict`."""

HELP = "predict (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab predict: not built yet")
