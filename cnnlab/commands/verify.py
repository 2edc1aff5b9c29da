"""PLACEHOLDER: replaced by the owner of `cnnlab verify`."""

HELP = "verify (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab verify: not built yet")
