"""`python -m rslad_tf.bench`: see `rslad_tf.bench.cli`."""

import sys

from rslad_tf.bench.cli import main
from rslad_tf.common.errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(main))
