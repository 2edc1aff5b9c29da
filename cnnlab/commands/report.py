"""PLACEHOLDER: replaced by the owner of `cnnlab report`."""

HELP = "report (not built yet)"


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("cnnlab report: not built yet")
