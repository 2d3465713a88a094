"""`python -m kx_vision`: the commands, as the `kx-vision` console script lists and runs them."""

import sys

from kx_vision import cli

if __name__ == "__main__":
    sys.exit(cli.main())
