"""TensorFlow without its start-up chatter: `import_tensorflow`.

TensorFlow's native code writes a handful of lines straight to file descriptor 2 while
``import tensorflow`` runs and when the first device query initialises CUDA, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (absl's logger is not initialised yet). On a machine
without a GPU that is seven lines before any output of ours, so a one-line user error
would not be one line. `import_tensorflow` runs the import and the first device query
with file descriptor 2 sent to a temporary file, then writes back every captured line
that is not one of the known start-up messages of `STARTUP_NOISE`: a genuine warning or
error printed at that time still shows.

Every entry point imports TensorFlow through here (`rslad_tf.common.runtime.configure` calls it
first); after the first call TensorFlow is initialised and the later calls return at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

# The start-up lines of TensorFlow 2.21's native code, matched on the message after
# absl's "I0000 00:00:... file.cc:NN]" prefix. Nothing else is dropped.
STARTUP_NOISE = (
    # absl, before its logger is initialised
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    # oneDNN on CPU
    r"oneDNN custom operations are on\.",
    # no CUDA driver (CPU machines): at import and at the first device query
    r"Could not find cuda drivers on your machine, GPU will not be used\.",
    r"failed call to cuInit: ",
    # CPU instruction sets this build could use (shown at a log level below 2)
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate",
    # CUDA plugins registered twice when several CUDA-aware libraries load
    r"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory",
    r"TF-TRT Warning: Could not find TensorRT",
    r"computation placer already registered",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in STARTUP_NOISE))
_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` (one line of stderr) is one of the known start-up messages."""
    text = line.rstrip("\r\n")
    prefix = _ABSL_PREFIX.match(text)
    return bool(_NOISE.search(text[prefix.end():] if prefix else text))


def filter_noise(text: str) -> str:
    """``text`` without the lines of known start-up noise."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not is_startup_noise(line))


@contextlib.contextmanager
def native_stderr_filtered():
    """Within the block, file descriptor 2 goes to a temporary file; on exit the captured
    lines that are not start-up noise are written to stderr. Python's own ``sys.stderr``
    writes are captured and passed through the same way (they cannot match the noise).
    Without a usable descriptor 2 the block runs unfiltered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_noise(capture.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


@contextlib.contextmanager
def library_warnings_muted(names=("absl", "tensorflow")):
    """Within the block, the Python loggers ``names`` pass errors only. TensorFlow Datasets
    logs through absl a warning for every dataset folder it probes and finds empty
    ("Variant folder ... has no dataset_info.json"), which would stand before our own
    one-line error about the missing data; a library's errors still show."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


_DONE = False


def import_tensorflow():
    """``import tensorflow`` and its first device query (CUDA initialisation), without the
    start-up lines of `STARTUP_NOISE`; returns the module."""
    global _DONE
    if _DONE:
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    _DONE = True
    return tf
