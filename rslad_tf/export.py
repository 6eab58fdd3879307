"""`python -m rslad_tf.export`: a checkpoint to SavedModel, LiteRT or ONNX.

It lives in `rslad_tf.interop.export`."""

import sys

from rslad_tf.common.errors import run_cli
from rslad_tf.interop.export import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
