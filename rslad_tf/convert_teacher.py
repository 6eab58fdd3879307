"""`python -m rslad_tf.convert_teacher`: a PyTorch teacher's state dict to a `.keras` file.

The converter lives in rslad_tf.interop.convert_teacher; its `main` reports its own errors
(it chooses the Keras backend before Keras is imported)."""

import sys

from rslad_tf.interop.convert_teacher import main

if __name__ == "__main__":
    sys.exit(main())
