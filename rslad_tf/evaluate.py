"""`python -m rslad_tf.evaluate`: the evaluation command line.

The command is `rslad_tf.evaluation.cli`; the suite lives in `rslad_tf.evaluation`."""

import sys

from rslad_tf.common.errors import run_cli
from rslad_tf.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
