"""Evaluate from the repo root: `python test.py` scores results/unet_final.pt on data/test."""

import sys

from busseg.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--checkpoint" not in args:
        args = ["--checkpoint", "results/unet_final.pt", *args]
    sys.exit(main(["evaluate", *args]))
