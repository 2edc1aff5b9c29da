"""PLACEHOLDER: replaced by the owner of `cnnlab summary`."""

HELP = "summary (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab summary: not built yet")
