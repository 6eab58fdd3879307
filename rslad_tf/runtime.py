"""Process-wide TensorFlow settings for the entry points."""

from __future__ import annotations

import os


def configure(threads: int | None = None) -> None:
    """Quiet TensorFlow's C++ logs and size its thread pools to the machine.

    Oversubscribed thread pools make CPU runs many times slower on small machines;
    ``RSLAD_TF_THREADS`` (or ``threads``) sets the intra-op pool, inter-op stays at 1-2.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = threads or int(os.environ.get("RSLAD_TF_THREADS", "0")) or os.cpu_count() or 1
    # Let a torch-backend child process (reference AutoAttack) share the GPU.
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads <= 2 else 2)
    except RuntimeError:
        pass  # already initialised in this process: keep what is set
