"""`python -m cnnlab`: the same as the `cnnlab` command."""
import sys

from cnnlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
