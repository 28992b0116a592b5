"""Thin wrapper: ``python scripts/bench.py [flags]`` is ``mlp-torch bench [flags]``."""

import sys

from mlp_torch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
