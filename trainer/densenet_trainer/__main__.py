"""``python -m densenet_trainer``: the same as the ``densenet-train`` console script."""

import sys

from densenet_trainer.cli import main

sys.exit(main())
