"""Train from the repo root: `python train.py [busseg train options]` (configs/busi.yaml)."""

import sys

from busseg.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args = ["--config", "configs/busi.yaml", *args]
    sys.exit(main(["train", *args]))
