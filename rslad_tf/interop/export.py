"""Export a trained checkpoint for deployment; `python -m rslad_tf.export`.

    python -m rslad_tf.export CKPT --format saved_model|litert|litert-int8|onnx --out PATH

- ``saved_model``: Keras' ``model.export(format="tf_saved_model")`` (a directory).
- ``litert``: Keras' ``model.export(format="litert")``, TensorFlow's LiteRT converter on
  the float32 graph (a ``.tflite`` file).
- ``litert-int8``: the same converter with post-training integer quantisation: weights
  and activations in int8 (only int8 built-in ops allowed), the activation ranges
  calibrated on a seeded random sample of the *training* split (never the test images the
  artifact is then measured on). Input and output stay float32 (a quantise and a
  dequantise op at the edges), so the file takes the same [0, 1] images as the checkpoint.
- ``onnx``: Keras' ``model.export(format="onnx")`` through tf2onnx (an ``.onnx`` file).

The artifact is written to a temporary name beside ``--out`` and renamed into place, so
``--out`` is either absent or complete; an existing ``--out`` is never touched. Then it is
loaded back in its own runtime (`rslad_tf.interop.artifacts`) and compared with the Keras model on
the test images: the command prints its size and the largest logit difference.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

from rslad_tf.interop.artifacts import FORMATS, SUFFIX
from rslad_tf.common import fileio
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli

# Keras' format name for each of ours.
KERAS_FORMAT = {"saved_model": "tf_saved_model", "litert": "litert",
                "litert-int8": "litert", "onnx": "onnx"}
CALIBRATION_IMAGES = 256
# A float artifact that differs from the Keras logits by more than this is reported as
# not reproducing the model (the tests hold every float format to it).
FLOAT_TOLERANCE = 1e-4


def check_out_path(fmt: str, out: str) -> None:
    """`UserError` unless ``out`` is a new path with the suffix the format needs."""
    fileio.refuse_existing(out, "--out")
    suffix = os.path.splitext(out)[1].lower()
    if fmt in SUFFIX and suffix != SUFFIX[fmt]:
        raise UserError(f"--format {fmt} writes a {SUFFIX[fmt]} file; give --out a name "
                        f"ending in {SUFFIX[fmt]}")
    if fmt == "saved_model" and suffix in (".tflite", ".onnx", ".keras"):
        raise UserError(f"--format saved_model writes a directory; give --out a name "
                        f"without the {suffix} suffix")


def check_format_available(fmt: str) -> None:
    """`UserError` when the converter a format needs is not installed."""
    import importlib.util

    if fmt == "onnx" and importlib.util.find_spec("tf2onnx") is None:
        raise UserError("--format onnx needs tf2onnx (and onnxruntime to check the file): "
                        "`pip install -r requirements.txt`")


def representative_images(dataset: str, data_dir: str | None, n: int, seed: int):
    """``n`` training images in a seeded random order, one at a time as the LiteRT
    converter's calibration wants them (a generator factory)."""
    from rslad_tf.data import load_numpy

    x, _ = load_numpy(dataset, "train", data_dir)
    order = np.random.default_rng(seed).permutation(len(x))[:n]

    def generate():
        for i in order:
            yield [x[i:i + 1].astype(np.float32)]

    return generate


def _write(model, fmt: str, target: str, *, calibration=None) -> None:
    kwargs = {}
    if fmt == "litert-int8":
        import tensorflow as tf

        kwargs = dict(optimizations=[tf.lite.Optimize.DEFAULT],
                      representative_dataset=calibration,
                      target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]})
    model.export(target, format=KERAS_FORMAT[fmt], verbose=False, **kwargs)


def export(model, fmt: str, out: str, *, dataset: str = "digits", data_dir: str | None = None,
           calibration_images: int = CALIBRATION_IMAGES, seed: int = 0,
           calibration_data=None, compare_images=None, log=None) -> dict:
    """Export the Keras ``model`` as ``fmt`` to ``out`` (new path), load it back and
    compare it with the model. Returns the export record: format, path, size_bytes,
    max_logit_diff and prediction_agreement (percent) on ``compare_images`` (default: the
    dataset's test split), the calibration settings for int8, and the runtime.

    ``calibration_data``: images [N, H, W, C] that calibrate int8 instead of the seeded
    sample of ``calibration_images`` training images."""
    from rslad_tf.interop import artifacts
    from rslad_tf.transforms.precision import ensure_float32

    say = log or (lambda *_: None)
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_out_path(fmt, out)
    check_format_available(fmt)
    if fmt == "litert-int8" and calibration_images <= 0:
        raise UserError(f"--calibration-images must be positive, got {calibration_images}")
    model = ensure_float32(model)
    # A freshly loaded model has never been called; Keras' ONNX export refuses such a one.
    model(np.zeros([1, *model.input_shape[1:]], np.float32), training=False)
    calibration = None
    if fmt == "litert-int8" and calibration_data is not None:
        images = np.asarray(calibration_data, np.float32)
        calibration = lambda: ([images[i:i + 1]] for i in range(len(images)))  # noqa: E731
    elif fmt == "litert-int8":
        calibration = representative_images(dataset, data_dir, calibration_images, seed)
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-export-") as tmp:
        staged = os.path.join(tmp, os.path.basename(os.path.normpath(out)))
        say(f"exporting {model.name} as {fmt}")
        _write(model, fmt, staged, calibration=calibration)
        fileio.refuse_existing(out, "--out")  # it may have appeared while converting
        os.rename(staged, out)
    try:
        artifact = artifacts.load(out)
        if compare_images is None:
            from rslad_tf.data import load_numpy

            compare_images, _ = load_numpy(dataset, "test", data_dir)
        keras_logits = np.concatenate([
            np.asarray(model(compare_images[i:i + 256], training=False), np.float32)
            for i in range(0, len(compare_images), 256)])
        artifact_logits = artifacts.predict_batches(artifact, compare_images)
    except BaseException:
        # An artifact its own runtime cannot run is no export: remove what we wrote.
        (shutil.rmtree if os.path.isdir(out) else os.remove)(out)
        raise
    diff = float(np.max(np.abs(artifact_logits - keras_logits)))
    agreement = 100.0 * float(np.mean(artifact_logits.argmax(-1) == keras_logits.argmax(-1)))
    record = {"format": artifact.format, "path": os.path.abspath(out),
              "size_bytes": artifact.size_bytes, "max_logit_diff": diff,
              "prediction_agreement": agreement, "compared_images": int(len(compare_images)),
              "runtime": artifact.runtime}
    if fmt == "litert-int8":
        record["calibration"] = (
            {"split": "train", "images": int(calibration_images), "seed": int(seed)}
            if calibration_data is None else {"split": "given", "images": len(calibration_data)})
    if fmt != "litert-int8" and diff > FLOAT_TOLERANCE:
        say(f"warning: the {fmt} artifact's logits differ from the Keras model's by {diff:.3g} "
            f"(> {FLOAT_TOLERANCE:g})")
    return record


def format_record(record: dict) -> str:
    """The two lines the command prints."""
    return (f"wrote {record['path']} ({record['format']}, {record['size_bytes'] / 1024:.1f} KiB"
            f" on disk)\nlargest logit difference from the Keras model on "
            f"{record['compared_images']} test images: {record['max_logit_diff']:.3g} "
            f"(same predicted class on {record['prediction_agreement']:.2f}%)")


def build_parser():
    parser = ArgumentParser(
        prog="python -m rslad_tf.export",
        description="Export a checkpoint as a SavedModel, a LiteRT file (float or int8) or "
                    "ONNX, and check it against the Keras model.")
    parser.add_argument("checkpoint", help=".keras file to export")
    parser.add_argument("--format", required=True, choices=FORMATS, help="artifact format")
    parser.add_argument("--out", required=True,
                        help="new path: a directory for saved_model, NAME.tflite for litert "
                             "and litert-int8, NAME.onnx for onnx")
    parser.add_argument("--dataset", help="dataset of the calibration and comparison images "
                                          "(default: the run's, else digits)")
    parser.add_argument("--data-dir", help="local dataset files (CIFAR archives or TFDS dir)")
    parser.add_argument("--calibration-images", type=int, default=CALIBRATION_IMAGES,
                        help="litert-int8: training images that calibrate the activation "
                             f"ranges (default {CALIBRATION_IMAGES})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the calibration sample (default 0)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    # Cheap checks first, before TensorFlow is imported.
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"checkpoint file {args.checkpoint!r} does not exist")
    check_out_path(args.format, args.out)
    check_format_available(args.format)
    if args.calibration_images <= 0:
        raise UserError(f"--calibration-images must be positive, got {args.calibration_images}")
    from rslad_tf.methods import saving
    from rslad_tf.common import runtime
    from rslad_tf.data import check_model_fits, spec

    run_config = fileio.run_config_of(args.checkpoint) or {}
    dataset = args.dataset or run_config.get("dataset") or "digits"
    data_spec = spec(dataset)
    data_dir = args.data_dir or (run_config.get("data_dir")
                                 if dataset == run_config.get("dataset") else None)
    runtime.configure()
    model = saving.load_model(args.checkpoint, what="checkpoint")
    check_model_fits(model, data_spec, f"checkpoint {args.checkpoint!r}",
                     "pass the right --dataset", require_shapes=False)
    record = export(model, args.format, args.out, dataset=dataset, data_dir=data_dir,
                    calibration_images=args.calibration_images, seed=args.seed,
                    log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_record(record))


if __name__ == "__main__":
    sys.exit(run_cli(main))
