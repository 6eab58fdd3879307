"""`python -m rslad_tf.verify_autoattack`: native against reference AutoAttack on one checkpoint.

It lives in `rslad_tf.evaluation.verify_autoattack`."""

import sys

from rslad_tf.common.errors import run_cli
from rslad_tf.evaluation.verify_autoattack import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
