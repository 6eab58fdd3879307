"""`python -m rslad_tf.report`: tables from eval JSONs and run directories.

It lives in `rslad_tf.evaluation.report`."""

import sys

from rslad_tf.common.errors import run_cli
from rslad_tf.evaluation.report import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
