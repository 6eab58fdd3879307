"""Convert a PyTorch checkpoint of a reference model into a Keras `.keras` file.

    python -m rslad_tf.convert_teacher SRC.pt --out teacher.keras [--arch ARCH]
        [--num-classes N] [--depth D --widen-factor K]
        [--normalization auto|cifar10|cifar100|none] [--sha256 HEX]

Without flags the architecture is read from the checkpoint (`infer_architecture`): the
layout from its key names, the number of classes from the classifier's weight, a
WideResNet's depth and width from its block count and channel count, so RobustBench's
Linf CIFAR-10/100 WideResNets (TRADES or DeepMind layout, any depth and width) convert as
they are. What the file does not store (activation, input normalisation) is printed as an
assumption; what cannot be inferred is named in a one-line error.

The RSLAD teachers (TRADES WRN-34-10 for CIFAR-10, DeepMind WRN-70-16 for CIFAR-100) were
published as PyTorch files. This reads such a file safely and writes the same network as
a pure Keras model (see `rslad_tf.models`), which the rest of the toolkit loads with
`keras.saving.load_model`. Works for wrn34_10, wrn70_16, resnet18, resnet50, mobilenetv2.

Safety (docs/paper.md section 6: teacher files were pickles passed around on file-sharing
links): the file is read only with `torch.load(..., weights_only=True)`, which refuses
pickles that would run code, and its SHA-256 is checked when known or given. torch is
imported inside `load_state_dict_file` only: nothing else in the toolkit needs it.
The command line runs Keras on its torch backend unless KERAS_BACKEND is set (the
`.keras` file it writes is backend-independent and loads under TensorFlow).

Mapping: our Keras layer names are the reference PyTorch module paths with "." written
as "__", so `layer1.0.conv1.weight` goes to layer `layer1__0__conv1`, with conv kernels
OIHW -> HWIO, depthwise kernels (C,1,H,W) -> (H,W,C,1), linear weights transposed and
BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.
Every weight of the Keras model must be filled and every key of the checkpoint used
(except `num_batches_tracked` and the known-unused keys of `IGNORED_PREFIXES`); the
first key that does not fit is named in a one-line error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import warnings

import numpy as np

from rslad_tf.common import fileio
from rslad_tf.common.errors import UserError

# File names of the paper's teachers. `sha256` is the digest of the file as published;
# None where no digest is documented anywhere we could check (never guessed).
KNOWN_TEACHERS = {
    "model_cifar_wrn.pt": {
        "description": "TRADES WRN-34-10, CIFAR-10 (Zhang et al. 2019; RSLAD's CIFAR-10 "
                       "teacher, 84.92 clean / 53.08 AA)",
        "arch": "wrn34_10",
        "num_classes": 10,
        "normalization": None,  # TRADES feeds [0,1] pixels, no normalisation
        # Unknown: the TRADES authors publish the file on Google Drive without a digest.
        "sha256": None,
        "sha256_source": None,
    },
    "cifar100_linf_wrn70-16_without.pt": {
        "description": "DeepMind WRN-70-16 Swish, CIFAR-100 Linf, no extra data (Gowal et "
                       "al. 2020; RSLAD's CIFAR-100 teacher, 60.86 clean / 30.03 AA), from "
                       "storage.googleapis.com/dm-adversarial-robustness/",
        "arch": "wrn70_16",
        "num_classes": 100,
        # The checkpoint's authors normalise with CIFAR-100 statistics; the RSLAD reference
        # code used CIFAR-10 statistics for this teacher (pass --normalization cifar10 to
        # reproduce that).
        "normalization": "cifar100",
        # Not published by DeepMind. Documented by a third party: the teacher preflight
        # check of a public CIARD (ICCV 2025) reproduction, which pins this digest and
        # measured the 60.86% clean accuracy DeepMind reports for the file. Pass
        # --sha256 to pin a different file.
        "sha256": "3114df6b9d5adf9f275e8fea5a91b71c61df78a568ad31544b6950807d595c8c",
        "sha256_source": "third-party (CIARD reproduction preflight check), not DeepMind",
    },
}

ARCHS = ("wrn34_10", "wrn70_16", "resnet18", "resnet50", "mobilenetv2")

# Keys present in reference checkpoints that no Keras weight corresponds to.
IGNORED_PREFIXES = {
    # TRADES' WideResNet defines sub_block1 but its forward never calls it.
    "wrn34_10": ("sub_block1.",),
}
# RobustBench's DMWideResNet registers the normalisation as buffers `mean` / `std`
# (DeepMind's own file keeps them as plain attributes, so they are not saved).
NORMALIZATION_BUFFERS = {"wrn70_16": ("mean", "std")}

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
       "running_var": "moving_variance"}


class ConversionError(UserError, ValueError):
    """The checkpoint does not fit the architecture, or the file cannot be used."""


# Hex SHA-256 of a file (one implementation for the whole toolkit).
sha256_of = fileio.sha256


def load_state_dict_file(path: str) -> dict:
    """Read a PyTorch checkpoint safely and return its state dict as numpy arrays.

    Only `torch.load(path, map_location="cpu", weights_only=True)`: pickles that would
    construct arbitrary objects are refused by torch. Accepts a raw state dict or a dict
    holding one under "state_dict" / "model_state_dict".
    """
    try:
        import torch  # only here: the rest of the toolkit never imports torch
    except ImportError:
        raise ConversionError(
            "reading a PyTorch checkpoint needs PyTorch, which is not installed: `pip install "
            "-r requirements-dev.txt` (or `pip install rslad_tf[autoattack]`)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(
            f"cannot read {path} with torch.load(weights_only=True) (refused or not a "
            f"PyTorch checkpoint): {first}") from None
    return extract_state_dict(obj)


def extract_state_dict(obj) -> dict:
    """The state dict inside a loaded checkpoint, values as float32/int numpy arrays."""
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise ConversionError("the checkpoint holds no state dict (expected a dict of "
                              "tensors, possibly under 'state_dict' or 'model_state_dict')")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "shape"):
            raise ConversionError(f"checkpoint entry {key!r} is not a tensor")
        if hasattr(value, "detach"):  # torch.Tensor (bfloat16 has no numpy dtype)
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            value = value.numpy()
        out[str(key)] = np.asarray(value)
    return out


def _strip_module(state_dict: dict) -> dict:
    """Drop the `module.` prefix that `torch.nn.DataParallel` adds to every key."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


# --- what the checkpoint says about its architecture ---------------------------------

# The layouts `infer_architecture` recognises: arch -> a key that only that layout has.
_SIGNATURES = (
    ("wrn34_10", "block1.layer.0.conv1.weight"),    # TRADES / RobustBench WideResNet
    ("wrn70_16", "layer.0.block.0.conv_0.weight"),  # DeepMind / RobustBench DMWideResNet
    ("resnet50", "layer1.0.conv3.weight"),          # bottleneck ResNet (kuangliu layout)
    ("resnet18", "layer1.0.conv1.weight"),          # basic-block ResNet (kuangliu layout)
    ("mobilenetv2", "layers.0.conv1.weight"),       # MobileNetV2 (kuangliu layout)
)
_LAYOUT_NAMES = "TRADES/RobustBench WideResNet, DeepMind WideResNet, ResNet-18/50, MobileNetV2"
# The classifier of each layout: its weight's first dimension is the number of classes.
_CLASSIFIER = {"wrn34_10": "fc.weight", "wrn70_16": "logits.weight", "resnet18": "linear.weight",
               "resnet50": "linear.weight", "mobilenetv2": "linear.weight"}
_RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


def _count_blocks(keys, prefix: str) -> int:
    """How many consecutive blocks ``prefix{i}.`` (i = 0, 1, ...) the keys hold."""
    indices = {int(m.group(1)) for k in keys
               for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    n = 0
    while n in indices:
        n += 1
    return n


def infer_architecture(state_dict: dict, arch: str | None = None):
    """(arch, num_classes, builder kwargs, assumptions) read from a state dict's keys and
    shapes: the layout from its key names, the classes from the classifier's weight, and a
    WideResNet's depth (6 n + 4 for n blocks per group) and width (the first group's
    channels / 16). ``arch`` (the user's) skips the layout guess. ``assumptions`` lists, in
    words, what the file does not store and was assumed. `ConversionError` names what could
    not be inferred."""
    sd = _strip_module(dict(state_dict))
    keys = list(sd)
    if arch is None:
        for candidate, signature in _SIGNATURES:
            if signature in sd:
                arch = candidate
                break
        else:
            raise ConversionError(
                f"cannot infer the architecture: the checkpoint's keys (first: {keys[0]!r}) "
                f"match none of the known layouts ({_LAYOUT_NAMES}); pass --arch")
    classifier = _CLASSIFIER[arch]
    if classifier not in sd or sd[classifier].ndim != 2:
        raise ConversionError(f"cannot infer the number of classes: the checkpoint has no "
                              f"{classifier!r} matrix ({arch} layout); pass --num-classes")
    num_classes = int(sd[classifier].shape[0])
    kwargs, assumptions = {}, []
    if arch.startswith("wrn"):
        group, conv = (("block1.layer.", "conv1") if arch == "wrn34_10"
                       else ("layer.0.block.", "conv_0"))
        n = _count_blocks(keys, group)
        first = sd.get(f"{group}0.{conv}.weight")
        if n == 0 or first is None or first.shape[0] % 16:
            raise ConversionError(f"cannot infer the WideResNet's depth and width: no "
                                  f"'{group}0.{conv}.weight' of 16 k channels; pass --depth "
                                  "and --widen-factor")
        kwargs.update(depth=6 * n + 4, widen_factor=int(first.shape[0]) // 16)
        assumptions.append("activation ReLU (TRADES layout)" if arch == "wrn34_10" else
                           "activation Swish (DeepMind layout)")
    elif arch in _RESNET_BLOCKS:
        counts = tuple(_count_blocks(keys, f"layer{i}.") for i in range(1, 5))
        if counts != _RESNET_BLOCKS[arch]:
            raise ConversionError(f"cannot place a ResNet with {counts} blocks per stage: "
                                  f"{arch} has {_RESNET_BLOCKS[arch]}; pass --arch")
        width = int(sd["conv1.weight"].shape[0]) if "conv1.weight" in sd else 64
        if width != 64:
            kwargs["base_width"] = width
    if arch != "wrn70_16":
        assumptions.append("inputs in [0, 1] without normalisation (the file stores none)")
    elif not all(k in sd for k in NORMALIZATION_BUFFERS["wrn70_16"]):
        assumptions.append("input normalisation not stored: --normalization, else auto "
                           "(CIFAR-100 statistics for 100 classes, CIFAR-10 otherwise)")
    return arch, num_classes, kwargs, assumptions


def _weight_slot(layer, param: str):
    """(variable, numpy transform, inverse permutation for messages) for a PyTorch
    parameter name of `layer`, or None when the layer has no such parameter."""
    import keras

    kind = type(layer)
    by_name = {v.name: v for v in layer.weights}
    if issubclass(kind, keras.layers.BatchNormalization):
        var = by_name.get(_BN.get(param, ""))
        return (var, lambda a: a, None) if var is not None else None
    # Per kernel layer: the axes that turn the torch weight into the Keras kernel, and the
    # torch shape's axes read from the Keras kernel's shape.
    kernel_layouts = ((keras.layers.DepthwiseConv2D, (2, 3, 0, 1), (2, 3, 0, 1)),
                      (keras.layers.Conv2D, (2, 3, 1, 0), (3, 2, 0, 1)),
                      (keras.layers.Dense, (1, 0), (1, 0)))
    for layer_type, to_keras, torch_axes in kernel_layouts:
        if issubclass(kind, layer_type):
            if param == "weight":
                return by_name["kernel"], lambda a, axes=to_keras: a.transpose(axes), torch_axes
            if param == "bias" and "bias" in by_name:
                return by_name["bias"], lambda a: a, None
            return None
    return None


def _torch_params(layer) -> list[str]:
    """PyTorch parameter names that a Keras layer with weights expects, in order."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return ["weight", "bias", "running_mean", "running_var"]
    names = {v.name for v in layer.weights}
    return ["weight"] + (["bias"] if "bias" in names else [])


def convert_state_dict(state_dict: dict, arch: str, num_classes: int, **kw):
    """Build `rslad_tf.models.create(arch, num_classes, **kw)` and load `state_dict` into it.

    `state_dict`: PyTorch key -> tensor or numpy array (a `module.` prefix is stripped).
    `kw` goes to the builder (e.g. `normalization=` for wrn70_16, `depth=` /
    `widen_factor=` for the WideResNets). For wrn70_16, when the checkpoint carries
    `mean` / `std` buffers (RobustBench) and `normalization` is not given, the buffers
    set the normalisation. Returns the Keras model; raises `ConversionError` naming the
    first key that is unexpected, missing or of the wrong shape.
    """
    from rslad_tf.models import create

    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
    state_dict = _strip_module(extract_state_dict(dict(state_dict)))

    buffers = NORMALIZATION_BUFFERS.get(arch, ())
    found = {k: state_dict.pop(k) for k in buffers if k in state_dict}
    if found:
        if set(found) != set(buffers):
            raise ConversionError(f"checkpoint has {sorted(found)} but not all of {buffers}")
        stats = tuple(tuple(float(v) for v in found[k].ravel()) for k in buffers)
        if "normalization" not in kw:
            kw["normalization"] = stats
        else:
            from rslad_tf.models.wrn import resolve_normalization

            chosen = resolve_normalization(kw["normalization"], num_classes)
            if chosen is None or not np.allclose(np.array(chosen), np.array(stats), atol=1e-6):
                warnings.warn(f"the checkpoint's mean/std buffers {stats} differ from the "
                              f"chosen normalization {kw['normalization']!r}; using the "
                              "chosen one", stacklevel=2)

    try:
        model = create(arch, num_classes, **kw)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"cannot build {arch}: {e}") from None

    layers_by_name = {layer.name: layer for layer in model.layers if layer.weights}
    ignored = IGNORED_PREFIXES.get(arch, ())
    assigned = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or key.startswith(ignored):
            continue
        prefix, _, param = key.rpartition(".")
        layer = layers_by_name.get(prefix.replace(".", "__"))
        slot = _weight_slot(layer, param) if layer is not None else None
        if slot is None:
            raise ConversionError(f"unexpected key {key!r} in the checkpoint: {arch} "
                                  "has no such weight")
        var, transform, inverse = slot
        expected = tuple(var.shape)
        torch_expected = expected if inverse is None else tuple(expected[i] for i in inverse)
        if value.ndim != len(expected) or tuple(transform(value).shape) != expected:
            raise ConversionError(
                f"shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, "
                f"{arch} with {num_classes} classes expects {torch_expected}")
        assigned[var.path] = (var, transform(value).astype(var.dtype, copy=False))

    for layer in layers_by_name.values():
        prefix = layer.name.replace("__", ".")
        for param in _torch_params(layer):
            var = _weight_slot(layer, param)[0]
            if var.path not in assigned:
                raise ConversionError(f"missing key {prefix}.{param!s} in the checkpoint "
                                      f"(needed by {arch})")
    for var, value in assigned.values():
        var.assign(value)
    return model


# --- command line -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one line `error: ...` (exit status 2)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m rslad_tf.convert_teacher",
        description="Convert a PyTorch checkpoint (TRADES WRN-34-10, DeepMind WRN-70-16, "
                    "ResNet-18/50, MobileNetV2 of the reference code) into a Keras .keras "
                    "file. Reads the file only with torch.load(weights_only=True).")
    p.add_argument("src", help="PyTorch checkpoint (.pt / .pth)")
    p.add_argument("--arch", choices=ARCHS,
                   help="architecture; default: KNOWN_TEACHERS for a known file name, else "
                        "read from the checkpoint's keys")
    p.add_argument("--num-classes", type=int,
                   help="default: read from the classifier's weight in the checkpoint")
    p.add_argument("--normalization", choices=("auto", "cifar10", "cifar100", "none"),
                   help="wrn70_16 only: input statistics inside the model (auto: CIFAR-100 "
                        "for 100 classes, else CIFAR-10). The RSLAD reference used cifar10 "
                        "for its CIFAR-100 teacher; the checkpoint's authors used cifar100")
    p.add_argument("--depth", type=int,
                   help="WideResNets only: depth (default: counted from the checkpoint's blocks)")
    p.add_argument("--widen-factor", type=int,
                   help="WideResNets only: widen factor (default: from the checkpoint's shapes)")
    p.add_argument("--sha256", help="refuse unless the source file has this SHA-256 "
                                    "(default: the documented digest of a known teacher)")
    p.add_argument("--out", required=True, help="output .keras file (must not exist)")
    return p


def _save_atomically(model, out: str) -> None:
    """Write `out` via a temporary file in the same directory; never replace a file."""
    directory = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix=".convert_teacher-", suffix=".keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        try:
            os.link(tmp, out)  # atomic, and fails if `out` appeared meanwhile
        except FileExistsError:
            raise fileio.output_exists_error(out, "--out", ConversionError) from None
        except OSError:  # no hard links on this file system
            fileio.refuse_existing(out, "--out", ConversionError)
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_arch_flags(args, arch: str) -> None:
    if args.normalization is not None and arch != "wrn70_16":
        raise ConversionError(f"--normalization applies to wrn70_16 only (this is {arch})")
    for flag, value in (("depth", args.depth), ("widen-factor", args.widen_factor)):
        if value is not None and not arch.startswith("wrn"):
            raise ConversionError(f"--{flag} applies to WideResNets only (this is {arch})")


def _resolve_architecture(args, known: dict, arch, state_dict):
    """(arch, num_classes, builder kwargs, assumptions): the flags first, then the
    KNOWN_TEACHERS entry, then what `infer_architecture` reads from the checkpoint."""
    given_all = (arch is not None and args.num_classes is not None
                 and (not arch.startswith("wrn") or None not in (args.depth, args.widen_factor)))
    try:
        arch, num_classes, kw, assumptions = infer_architecture(state_dict, arch)
    except ConversionError:
        if not given_all:
            raise
        # Everything was given: the conversion itself names the first key that does not fit.
        num_classes, kw, assumptions = args.num_classes, {}, []
    _check_arch_flags(args, arch)
    num_classes = args.num_classes or known.get("num_classes") or num_classes
    for flag, value in (("depth", args.depth), ("widen_factor", args.widen_factor)):
        if value is not None:
            kw[flag] = value
    if args.normalization is not None or (arch == "wrn70_16" and "normalization" in known):
        norm = args.normalization if args.normalization is not None else known["normalization"]
        kw["normalization"] = None if norm == "none" else norm
        assumptions = [a for a in assumptions if not a.startswith("input normalisation")]
    return arch, num_classes, kw, assumptions


def run(argv=None) -> str:
    """Command-line entry: convert and write; returns the output path.

    Raises `ConversionError` for every user mistake (bad file, digest, key, path).
    """
    args = _parser().parse_args(argv)
    known = KNOWN_TEACHERS.get(os.path.basename(args.src), {})
    if args.arch and known and args.arch != known["arch"]:
        known = {}  # the user says it is something else: no defaults from the table
    arch = args.arch or known.get("arch")  # None: read from the checkpoint's keys
    if arch is not None:
        _check_arch_flags(args, arch)

    if not args.out.endswith(".keras"):
        raise ConversionError(f"--out must end in .keras, got {args.out}")
    fileio.refuse_existing(args.out, "--out", ConversionError)
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise ConversionError(f"the directory of {args.out} does not exist")
    if not os.path.isfile(args.src):
        raise ConversionError(f"no such file: {args.src}")

    expected = args.sha256 or known.get("sha256")
    digest = sha256_of(args.src)
    if expected is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
            raise ConversionError(f"--sha256 must be 64 hex digits, got {expected!r}")
        if digest != expected.lower():
            source = "--sha256" if args.sha256 else "KNOWN_TEACHERS"
            raise ConversionError(f"SHA-256 mismatch for {args.src}: file has {digest}, "
                                  f"{source} expects {expected.lower()}")

    state_dict = load_state_dict_file(args.src)
    arch, num_classes, kw, assumptions = _resolve_architecture(args, known, arch, state_dict)
    print(f"architecture: {arch}, {num_classes} classes"
          + "".join(f", {k.replace('_', ' ')} {v}" for k, v in sorted(kw.items())
                    if k != "normalization")
          + (f"; assumed: {'; '.join(assumptions)}" if assumptions else ""))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert_state_dict(state_dict, arch, num_classes, **kw)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    _save_atomically(model, args.out)
    n_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    print(f"wrote {args.out}: {arch}, {num_classes} classes, {n_params:,} parameters, "
          f"source sha256 {digest}" + (" (verified)" if expected else " (not pinned)"))
    return args.out


def main(argv=None) -> int:
    # Keras is imported lazily, so the backend can still be chosen here. torch is needed
    # to read the checkpoint anyway and `.keras` files are backend-independent, so the
    # command runs Keras on torch unless KERAS_BACKEND says otherwise: no TensorFlow
    # start-up (its C++ logs would bury a one-line error), and a faster start.
    import importlib.util

    if "keras" not in sys.modules and importlib.util.find_spec("torch") is not None:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        run(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage mistake (2, one line)
        return e.code if isinstance(e.code, int) else 2
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unreadable source, unwritable output directory, full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
