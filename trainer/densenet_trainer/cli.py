"""Console script ``densenet-train``: dispatch only.

``densenet-train launch ...`` is the pod entrypoint (launch.py); anything else is a training
command line (flags.py), run in this process by train.py. Neither this module nor the two it
imports at the top load torch, so ``--help`` and ``launch`` start fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from densenet_trainer import launch
from densenet_trainer.flags import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "launch":
        return launch.main(argv[1:])
    args = parse_args(argv)
    from densenet_trainer.train import run  # torch: only once the flags are good

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
