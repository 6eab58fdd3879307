"""`python -m rslad_tf.train`: the training command line.

The command line is `rslad_tf.training.cli`; the loop, the run directory and the fast
paths live in `rslad_tf.training`."""

import sys

from rslad_tf.common.errors import run_cli
from rslad_tf.training.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
