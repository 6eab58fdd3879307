"""Exported models (what a user deploys): find an artifact's format, load it behind one
interface, time it.

Formats (`rslad_tf.interop.export` writes them):

- ``saved_model``: a TensorFlow SavedModel directory (Keras ``model.export``), run by
  TensorFlow through its ``serving_default`` signature;
- ``litert`` / ``litert-int8``: a LiteRT flatbuffer (``.tflite``), float32 or int8
  post-training quantised, run by the LiteRT interpreter (``ai_edge_litert``; the int8
  file is told apart by its int8 tensors);
- ``onnx``: an ONNX file (``.onnx``), run by ONNX Runtime on CPU.

`load` returns a `LoadedArtifact` whose ``predict`` maps float32 images [N, H, W, C] in
[0, 1] to float32 logits [N, K], whatever the format. `ArtifactModel` lets the toolkit's
evaluation code (predictions, the query-based Square attack) call an artifact the way it
calls a Keras model. An artifact has no gradients here: white-box attacks are crafted on
the float checkpoint it was exported from.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable

import numpy as np

from rslad_tf.common.errors import UserError

FORMATS = ("saved_model", "litert", "litert-int8", "onnx")
# File suffix of each single-file format (a SavedModel is a directory).
SUFFIX = {"litert": ".tflite", "litert-int8": ".tflite", "onnx": ".onnx"}
SAVED_MODEL_FILE = "saved_model.pb"
KINDS = "a SavedModel directory, a .tflite file or an .onnx file"


@dataclasses.dataclass
class LoadedArtifact:
    """One loaded artifact. ``predict(images) -> logits`` (numpy, float32). ``graph_fn``:
    the same computation as a TensorFlow function that can run inside a graph (SavedModel
    only; None for runtimes outside TensorFlow). ``threads``: CPU threads of its runtime.
    ``handle``: the runtime's own object, kept alive as long as the artifact (a loaded
    SavedModel's functions fail once its variables are garbage-collected)."""

    path: str
    format: str
    predict: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple
    num_classes: int
    threads: int
    runtime: str
    graph_fn: Callable | None = None
    handle: object = None

    @property
    def size_bytes(self) -> int:
        return size_on_disk(self.path)


def is_artifact(path: str) -> bool:
    """Does ``path`` look like an exported model (by its layout only; nothing is loaded)?"""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, SAVED_MODEL_FILE))
    return os.path.splitext(path)[1].lower() in (".tflite", ".onnx")


def size_on_disk(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


def _not_a_model(path: str, fmt: str, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return UserError(f"{path!r} is not a loadable {fmt} model ({reason}); pass {KINDS} "
                     "written by `python -m rslad_tf.export`")


def _tensorflow_threads() -> int:
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


def _load_saved_model(path: str, threads: int) -> LoadedArtifact:
    """A SavedModel through its ``serving_default`` signature (one image input, one logits
    output). It runs in this process's TensorFlow thread pool, not ``threads``."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        signature = loaded.signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001 - any failure: not a usable SavedModel
        raise _not_a_model(path, "SavedModel", exc) from None
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1 or len(signature.structured_outputs) != 1:
        raise UserError(f"SavedModel {path!r} has {len(inputs)} inputs and "
                        f"{len(signature.structured_outputs)} outputs; an image classifier "
                        "has one of each")
    (input_name, spec), = inputs.items()
    (output_name, out_spec), = signature.structured_outputs.items()

    def graph_fn(x):
        return tf.cast(signature(**{input_name: tf.cast(x, spec.dtype)})[output_name],
                       tf.float32)

    def predict(images):
        return np.asarray(graph_fn(tf.convert_to_tensor(images, tf.float32)))

    return LoadedArtifact(path, "saved_model", predict, tuple(spec.shape[1:]),
                          int(out_spec.shape[-1]), _tensorflow_threads(),
                          f"tensorflow {tf.__version__}", graph_fn=graph_fn, handle=loaded)


def _load_litert(path: str, threads: int) -> LoadedArtifact:
    """A .tflite file in the LiteRT interpreter. The batch dimension is resized to each
    call's batch; calls are serialised (an interpreter is not thread-safe)."""
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=path, num_threads=int(threads))
        interpreter.allocate_tensors()
    except Exception as exc:  # noqa: BLE001
        raise _not_a_model(path, "LiteRT", exc) from None
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    quantised = any(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
    lock = threading.Lock()
    batch = [int(inp["shape"][0])]

    def predict(images):
        images = np.asarray(images, np.float32)
        if inp["dtype"] != np.float32:  # integer input: quantise with the file's parameters
            scale, zero = inp["quantization"]
            images = np.clip(np.round(images / scale + zero), np.iinfo(inp["dtype"]).min,
                             np.iinfo(inp["dtype"]).max).astype(inp["dtype"])
        with lock:
            if len(images) != batch[0]:
                interpreter.resize_tensor_input(inp["index"], [len(images), *inp["shape"][1:]])
                interpreter.allocate_tensors()
                batch[0] = len(images)
            interpreter.set_tensor(inp["index"], images)
            interpreter.invoke()
            logits = interpreter.get_tensor(out["index"]).copy()
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            logits = (logits.astype(np.float32) - zero) * scale
        return logits.astype(np.float32)

    version = getattr(ai_edge_litert, "__version__", "")
    return LoadedArtifact(path, "litert-int8" if quantised else "litert", predict,
                          tuple(int(d) for d in inp["shape"][1:]), int(out["shape"][-1]),
                          int(threads), f"ai-edge-litert {version}".strip(),
                          handle=interpreter)


def _load_onnx(path: str, threads: int) -> LoadedArtifact:
    """An .onnx file in ONNX Runtime's CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("running an .onnx file needs onnxruntime: `pip install -r "
                        "requirements.txt`") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise _not_a_model(path, "ONNX", exc) from None
    (inp,), (out,) = session.get_inputs(), session.get_outputs()

    def predict(images):
        return np.asarray(session.run([out.name], {inp.name: np.asarray(images, np.float32)})[0],
                          np.float32)

    return LoadedArtifact(path, "onnx", predict, tuple(inp.shape[1:]), int(out.shape[-1]),
                          int(threads), f"onnxruntime {ort.__version__}", handle=session)


# The one registry of artifact loaders: container kind -> loader(path, threads).
LOADERS = {"saved_model": _load_saved_model, "litert": _load_litert, "onnx": _load_onnx}


def container_of(path: str) -> str:
    """The loader an artifact path needs ("saved_model", "litert" or "onnx"); `UserError`
    for a missing path or one of no known kind."""
    if not os.path.exists(path):
        raise UserError(f"{path!r} does not exist")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
            return "saved_model"
        raise UserError(f"directory {path!r} holds no {SAVED_MODEL_FILE}: it is not a "
                        f"SavedModel; pass {KINDS}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".tflite":
        return "litert"
    if suffix == ".onnx":
        return "onnx"
    raise UserError(f"{path!r} is not an exported model; pass {KINDS} (a .keras checkpoint "
                    "is evaluated as it is)")


def load(path: str, *, threads: int = 1) -> LoadedArtifact:
    """Load the artifact at ``path``; ``threads``: CPU threads of the LiteRT / ONNX
    runtime (a SavedModel uses TensorFlow's pool). `UserError` when it is not a model."""
    if int(threads) <= 0:
        raise UserError(f"--threads must be a positive integer, got {threads}")
    return LOADERS[container_of(path)](path, int(threads))


def predict_batches(artifact: LoadedArtifact, images, batch_size: int = 256) -> np.ndarray:
    """Logits of ``artifact`` on ``images`` in batches. [N, K] float32."""
    out = [artifact.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros([0, artifact.num_classes], np.float32)


def latency(artifact: LoadedArtifact, image, *, repeats: int = 200, warmup: int = 20) -> dict:
    """CPU latency of one call at batch 1: the median (and 90th percentile) over
    ``repeats`` timed calls after ``warmup`` untimed ones, in milliseconds."""
    x = np.asarray(image, np.float32).reshape([1, *np.shape(image)[-3:]])
    for _ in range(warmup):
        artifact.predict(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        artifact.predict(x)
        times.append(time.perf_counter() - started)
    times = np.asarray(times) * 1e3
    return {"batch_size": 1, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "repeats": int(repeats),
            "warmup": int(warmup), "threads": int(artifact.threads),
            "runtime": artifact.runtime}


class ArtifactModel:
    """An artifact called the way the evaluation code calls a Keras model:
    ``model(x, training=False)`` -> float32 logits tensor, eagerly or inside a
    ``tf.function`` graph (a LiteRT or ONNX runtime through ``tf.numpy_function``, so not
    under XLA). It has no gradients and no variables."""

    def __init__(self, artifact: LoadedArtifact):
        self.artifact = artifact
        self.name = f"{artifact.format}:{os.path.basename(os.path.normpath(artifact.path))}"
        self.input_shape = (None, *artifact.input_shape)
        self.output_shape = (None, artifact.num_classes)

    def __call__(self, x, training=False):
        import tensorflow as tf

        del training  # an exported model is always in inference mode
        if self.artifact.graph_fn is not None:
            return self.artifact.graph_fn(tf.convert_to_tensor(x, tf.float32))
        if tf.executing_eagerly():
            return tf.constant(self.artifact.predict(np.asarray(x, np.float32)))
        logits = tf.numpy_function(self.artifact.predict, [tf.cast(x, tf.float32)],
                                   tf.float32, stateful=False)
        logits.set_shape([None, self.artifact.num_classes])
        return logits
