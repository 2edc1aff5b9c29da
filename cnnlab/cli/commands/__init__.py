"""One module per ``cnnlab`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
