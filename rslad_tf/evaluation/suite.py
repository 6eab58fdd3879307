"""The paper's evaluation suite (docs/paper.md section 3) -> eval JSON;
`python -m rslad_tf.evaluate`.

Columns, L-infinity, eps = the dataset's threat model (8/255 on CIFAR, 0.2 on digits):

- ``clean``: no attack.
- ``fgsm``, ``pgd_sat``, ``pgd_trades``, ``cw_inf``: our compiled PGD engine with the
  settings of ``rslad_tf.attacks.PROTOCOL`` (FGSM; PGD-20 step 2/255 uniform start CE;
  PGD-20 step 0.003 uniform start CE; PGD-20 step 2/255 uniform start CW margin kappa 50).
- ``autoattack``: AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square-5000), in
  one of two implementations (``autoattack=`` / ``--autoattack``; the JSON records it as
  ``autoattack_impl``): ``"native"``, our TensorFlow one (`rslad_tf.attacks.autoattack`,
  compiled, in this process, checked against the reference by
  `rslad_tf.evaluation.verify_autoattack`), or ``"reference"``, the reference code run on the same
  ``.keras`` file under Keras' torch backend in a child process
  (`rslad_tf.attacks.autoattack.reference`; then the agreement of the two frameworks' clean
  predictions is recorded too). The reported accuracy is this model's (TensorFlow's)
  accuracy on the adversarial images AutoAttack returns; the robust accuracy after each of
  its four attacks is recorded beside it.
- black box: ``transfer_pgd`` / ``transfer_cw`` (PGD_SAT and CW_inf examples crafted on a
  surrogate model, classified by the target) and ``square`` (Square, 5000 queries, by the
  chosen AutoAttack implementation).

Accuracies are in percent of the evaluated points (the first ``n_examples`` test points,
as RobustBench does) and count a point when the model classifies its attacked image
correctly (the reference evaluation scripts' rule). The model is called in inference mode
and in float32 (a mixed-precision model is rebuilt in float32 first).

`accuracy_under_attack` / `predict_labels` are the small core shared with training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from rslad_tf.common import runtime
from rslad_tf.evaluation.core import correct_under_attack, predict_labels
from rslad_tf.transforms.precision import ensure_float32
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli

ATTACKS = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack",
           "transfer_pgd", "transfer_cw", "square")
WHITE_BOX = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")
# Transfer attacks: the white-box protocol attack crafted on the surrogate.
TRANSFER = {"transfer_pgd": "pgd_sat", "transfer_cw": "cw_inf"}
LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd_sat": "PGD_SAT", "pgd_trades": "PGD_TRADES",
          "cw_inf": "CW_inf", "autoattack": "AA", "transfer_pgd": "PGD-20 transfer",
          "transfer_cw": "CW_inf transfer", "square": "Square"}
SQUARE_QUERIES = 5000
# The AutoAttack / Square implementations (`evaluate(autoattack=...)`, ``--autoattack``).
AUTOATTACK_IMPLS = ("native", "reference")
# Native by default: it agreed with the reference within 0.5 points on every verification
# run on all 1,797 digits points (docs/evaluation-and-autoattack.md); PyTorch is then
# needed only for `--autoattack reference` and `python -m rslad_tf.verify_autoattack`.
DEFAULT_AUTOATTACK = "native"
# A returned adversarial image may sit this far outside the eps ball (float32 rounding).
BALL_TOLERANCE = 1e-5


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _percent(flags) -> float:
    return 100.0 * float(np.mean(flags))


def share_gpu_memory() -> None:
    """Let TensorFlow grow its GPU memory instead of taking it all at start-up, so the
    torch-backend AutoAttack process can use the same GPU. Effective only before TensorFlow
    has initialised its GPUs (the command line calls it first); otherwise set
    ``TF_FORCE_GPU_ALLOW_GROWTH=true`` in the environment."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised


def _run_config_for(checkpoint: str | None) -> dict | None:
    """The config.json of the training run a checkpoint belongs to (RUN/checkpoints/x.keras)."""
    if not checkpoint:
        return None
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))),
                        "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _checkpoint_label(path: str | None) -> str | None:
    if path is None:
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if stem in ("best", "last") else path


def _check_model_fits(model, data_spec, what: str) -> None:
    try:
        in_shape = tuple(model.input_shape[1:])
        classes = model.output_shape[-1]
    except (AttributeError, ValueError, TypeError):
        return  # subclassed model without static shapes: let the first call tell
    if in_shape != tuple(data_spec.image_shape):
        raise UserError(f"{what} takes inputs of shape {in_shape} but {data_spec.name} images "
                        f"are {tuple(data_spec.image_shape)}; pass the right --dataset")
    if classes != data_spec.num_classes:
        raise UserError(f"{what} predicts {classes} classes but {data_spec.name} has "
                        f"{data_spec.num_classes}; pass the right --dataset")


def validate_attacks(attacks, surrogate) -> list[str]:
    """The attacks to run in canonical order; `UserError` for unknown names."""
    if attacks is None:
        chosen = list(WHITE_BOX) + (list(TRANSFER) if surrogate is not None else [])
    else:
        if isinstance(attacks, str):
            attacks = [a for a in attacks.split(",")]
        attacks = [a.strip() for a in attacks if a.strip()]
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise UserError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(ATTACKS)}")
        if not attacks:
            raise UserError(f"no attack given; choose from {', '.join(ATTACKS)}")
        chosen = [a for a in ATTACKS if a in attacks]
    if surrogate is None and any(a in TRANSFER for a in chosen):
        raise UserError("transfer attacks need a surrogate model: pass --surrogate PATH")
    return chosen


def _check_numbers(n_examples, batch_size, eps, autoattack_batch_size) -> None:
    if n_examples is not None and (not isinstance(n_examples, (int, np.integer))
                                   or n_examples <= 0):
        raise UserError(f"--n-examples must be a positive integer, got {n_examples}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    if autoattack_batch_size is not None and autoattack_batch_size <= 0:
        raise UserError(f"the AutoAttack batch size must be positive, got {autoattack_batch_size}")
    if eps is not None and not (np.isfinite(eps) and 0.0 < eps <= 1.0):
        raise UserError(f"--eps must be in (0, 1] (images are in [0,1]), got {eps}")


# --------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------
def evaluate(model, *, dataset: str = "digits", data_dir: str | None = None, attacks=None,
             n_examples: int | None = None, batch_size: int = 256, eps: float | None = None,
             seed: int = 0, surrogate=None, autoattack_batch_size: int | None = None,
             method: str | None = None, model_name: str | None = None,
             checkpoint: str | None = None, log=None, autoattack_version: str = "standard",
             autoattack_attacks=None, autoattack_options: dict | None = None,
             autoattack_threads: int | None = None, sanity_checks: bool = True,
             autoattack: str | None = None) -> dict:
    """Evaluate ``model`` with the paper's protocol; returns the eval JSON (a dict).

    Args:
        model: a Keras model or the path of a ``.keras`` file.
        dataset, data_dir: the test set (``rslad_tf.data.load_numpy(dataset, "test")``).
        attacks: names from ``ATTACKS``; None = ``WHITE_BOX`` plus the transfer attacks when
            ``surrogate`` is given.
        n_examples: evaluate the first N test points (None = all).
        batch_size: batch of our attacks; eps: None = the dataset's threat model.
        seed: seed of every random start (each attack starts from a fresh generator) and of
            AutoAttack / Square.
        surrogate: a Keras model or ``.keras`` path the transfer attacks are crafted on.
        autoattack_batch_size: AutoAttack's batch size (default ``batch_size``).
        method, model_name, checkpoint: labels written to the JSON.
        log: callable receiving progress lines (None: silent).
        autoattack_version / _attacks / _options / _threads: the reference run's version
            ("standard" unless testing), its attacks for "custom", hyper-parameter overrides
            (tests only, recorded in the JSON) and torch CPU threads.
        sanity_checks: add the ``sanity`` object (gradient-masking warnings, see
            `rslad_tf.evaluation.sanity`) to the result.
        autoattack: the implementation of "autoattack" and "square": "native" (TensorFlow,
            this process) or "reference" (pyautoattack under the torch backend); None =
            ``DEFAULT_AUTOATTACK``. Version, attacks, options and batch size apply to both;
            ``autoattack_threads`` to the reference only.
    """
    from rslad_tf import attacks as attack_lib
    from rslad_tf.methods import saving
    from rslad_tf.data import load_numpy, spec

    say = log or (lambda *_: None)
    chosen = validate_attacks(attacks, surrogate)
    _check_numbers(n_examples, batch_size, eps, autoattack_batch_size)
    impl = _check_impl(autoattack)
    data_spec = spec(dataset)
    eps = float(data_spec.epsilon if eps is None else eps)
    aa_batch = int(autoattack_batch_size or batch_size)

    checkpoint_path = None
    if isinstance(model, (str, os.PathLike)):
        checkpoint_path = os.fspath(model)
        model = saving.load_model(checkpoint_path, what="checkpoint")
    as_given = model
    model = ensure_float32(model)
    # The file the reference attacks load: the checkpoint itself, unless it had to be
    # rebuilt in float32 (then the float32 copy is saved for the child process).
    saved_path = checkpoint_path if model is as_given else None
    _check_model_fits(model, data_spec, f"checkpoint {checkpoint_path or model.name!r}")
    surrogate_path = None
    if surrogate is not None and any(a in TRANSFER for a in chosen):
        if isinstance(surrogate, (str, os.PathLike)):
            surrogate_path = os.fspath(surrogate)
            surrogate = saving.load_model(surrogate_path, what="surrogate")
        surrogate = ensure_float32(surrogate)
        _check_model_fits(surrogate, data_spec, f"surrogate {surrogate_path or surrogate.name!r}")

    x, y = load_numpy(dataset, "test", data_dir)
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    n = len(x)
    if n == 0:
        raise UserError(f"the {dataset} test set is empty")

    run_config = _run_config_for(checkpoint_path) or {}
    result = {
        "dataset": dataset,
        "model": model_name or run_config.get("model") or model.name,
        "method": method or run_config.get("method"),
        "checkpoint": checkpoint or _checkpoint_label(checkpoint_path),
        "checkpoint_path": os.path.abspath(checkpoint_path) if checkpoint_path else None,
        "eps": eps,
        "n_examples": n,
        "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "autoattack_impl": impl,
        "attacks": {},
        "seconds": {},
    }
    if surrogate_path is not None:
        result["surrogate"] = os.path.abspath(surrogate_path)
    say(f"evaluating {result['checkpoint'] or result['model']} on {n} {dataset} test points, "
        f"eps {eps:.5g}: {', '.join(chosen)}")

    clean_pred = None
    with tempfile.TemporaryDirectory(prefix="rslad_tf-eval-") as tmp:
        for name in chosen:
            started = time.time()
            if name == "clean":
                clean_pred = predict_labels(model, x, batch_size)
                acc = _percent(clean_pred == y)
                result["attacks"]["clean"] = {"attack": "none"}
            elif name in attack_lib.PROTOCOL:
                settings = attack_lib.PROTOCOL[name]
                acc = _percent(correct_under_attack(model, x, y, attack=settings, eps=eps,
                                                    batch_size=batch_size, seed=seed))
                result["attacks"][name] = dict(settings.describe(eps), seed=int(seed),
                                               batch_size=int(batch_size))
            elif name in TRANSFER:
                settings = attack_lib.PROTOCOL[TRANSFER[name]]
                acc = _percent(correct_under_attack(model, x, y, attack=settings, eps=eps,
                                                    batch_size=batch_size, seed=seed,
                                                    source_model=surrogate))
                result["attacks"][name] = dict(
                    settings.describe(eps), seed=int(seed), batch_size=int(batch_size),
                    crafted_on=result.get("surrogate") or surrogate.name,
                    protocol_attack=TRANSFER[name])
            elif impl == "native":  # autoattack / square in TensorFlow, this process
                acc, info = _native_attack(
                    name, model, x, y, eps=eps, seed=seed, batch_size=aa_batch,
                    tf_batch_size=batch_size, version=autoattack_version,
                    attacks=autoattack_attacks, options=autoattack_options, log=log)
                result["attacks"][name] = info
                if name == "autoattack":
                    result["autoattack_per_attack"] = info["per_attack"]
            else:  # autoattack / square: the reference code in a torch-backend process
                if saved_path is None:
                    saved_path = os.path.join(tmp, "model.keras")
                    saving.save_model(model, saved_path)
                if clean_pred is None:
                    clean_pred = predict_labels(model, x, batch_size)
                acc, info = _reference_attack(
                    name, saved_path, model, x, y, clean_pred, eps=eps, seed=seed,
                    batch_size=aa_batch, tf_batch_size=batch_size,
                    version=autoattack_version, attacks=autoattack_attacks,
                    options=autoattack_options, threads=autoattack_threads, log=log)
                result["attacks"][name] = info
                if name == "autoattack":
                    result["autoattack_per_attack"] = info["per_attack"]
            seconds = time.time() - started
            result[f"{name}_acc"] = acc
            result["seconds"][name] = round(seconds, 3)
            say(f"  {LABELS[name]:<16} {acc:6.2f}%   ({seconds:.1f} s)")
    if sanity_checks:
        from rslad_tf.evaluation import sanity

        result["sanity"] = sanity.check(model, x, y, result, eps=eps, batch_size=batch_size,
                                        seed=seed)
        for warning in result["sanity"]["warnings"]:
            say(f"  warning: {warning}")
    return result


def _check_impl(autoattack) -> str:
    impl = DEFAULT_AUTOATTACK if autoattack is None else autoattack
    if impl not in AUTOATTACK_IMPLS:
        raise UserError(f"unknown AutoAttack implementation {impl!r}; choose one of "
                        f"{', '.join(AUTOATTACK_IMPLS)}")
    return impl


def _native_attack(name, model, x, y, *, eps, seed, batch_size, tf_batch_size, version,
                   attacks, options, log):
    """Run AutoAttack ("autoattack") or Square ("square") natively and re-classify the
    returned images with ``model``. Returns (accuracy %, settings dict)."""
    from rslad_tf.attacks import autoattack as native

    version, attacks, options = _run_settings(name, version, attacks, options)
    try:
        native.resolve(version, attacks, options)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None
    out = native.run(model, x, y, eps=eps, seed=seed, batch_size=batch_size, version=version,
                     attacks=attacks, options=options, log=log)
    x_adv, distance = _checked_adversarial(name, out["x_adv"], x, eps)
    tf_correct = predict_labels(model, x_adv, tf_batch_size) == y
    info = _run_info(name, "native TensorFlow (rslad_tf.attacks.autoattack); accuracy = this "
                           "model re-classifying the returned images",
                     out, distance, tf_correct, eps=eps, seed=seed, batch_size=batch_size,
                     version=version, options=options)
    info["jit_compile"] = bool(out["jit_compile"])
    return _percent(tf_correct), info


def _run_settings(name, version, attacks, options):
    """(version, attacks, options) of an AutoAttack ("autoattack") or Square ("square")
    run: Square is a custom run of Square alone, with the paper's queries unless
    overridden."""
    options = dict(options or {})
    if name == "square":
        version, attacks = "custom", ["square"]
        options.setdefault("n_queries", SQUARE_QUERIES)
    return version, attacks, options


def _run_info(name, implementation, out, max_perturbation, tf_correct, *, eps, seed,
              batch_size, version, options) -> dict:
    """The eval JSON's record of an AutoAttack or Square run, either implementation: its
    settings, the robust accuracy after each attack, and whether it was the standard
    setting."""
    info = {
        "implementation": implementation,
        "version": version,
        "attacks": list(out["attacks"]),
        "norm": "Linf",
        "eps": float(eps),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "options": options,
        "per_attack": {k: _percent(v) for k, v in out["per_attack"].items()},
        "per_attack_seconds": {k: round(v, 3) for k, v in out["seconds"].items()},
        "robust_flag_mismatches": int(np.sum(tf_correct != out["robust"])),
        "max_perturbation": max_perturbation,
    }
    if name == "autoattack":
        info["standard"] = version == "standard" and not options
    else:
        info["n_queries"] = int(options["n_queries"])
        info["p_init"] = 0.8
        info["standard"] = int(options["n_queries"]) == SQUARE_QUERIES and len(options) == 1
    return info


def _checked_adversarial(name, x_adv, x, eps):
    """(``x_adv``, its largest L-inf distance from ``x``) if it lies in the threat model
    (eps ball, [0,1]); RuntimeError otherwise."""
    distance = float(np.max(np.abs(x_adv - x))) if len(x) else 0.0
    if distance > eps + BALL_TOLERANCE or x_adv.min() < 0.0 or x_adv.max() > 1.0:
        raise RuntimeError(f"{name} returned images outside the threat model "
                           f"(L-inf distance {distance:.6g} > eps {eps:.6g} or outside [0,1])")
    return x_adv, distance


def _reference_attack(name, path, model, x, y, clean_pred, *, eps, seed, batch_size,
                      tf_batch_size, version, attacks, options, threads, log):
    """Run AutoAttack ("autoattack") or Square ("square") through the torch backend and
    re-classify the returned images with ``model``. Returns (accuracy %, settings dict)."""
    import importlib.util

    from rslad_tf.attacks.autoattack import reference as reference

    missing = [m for m in ("torch", "pyautoattack") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{LABELS[name]} runs the reference code under PyTorch, but "
                        f"{' and '.join(missing)} is not installed: `pip install -r "
                        "requirements-dev.txt` (or `pip install rslad_tf[autoattack]`), or "
                        "use --autoattack native")
    version, attacks, options = _run_settings(name, version, attacks, options)
    try:
        out = reference.run(path, x, y, eps=eps, version=version, attacks=attacks, seed=seed,
                            batch_size=batch_size, options=options, threads=threads, log=log)
    except reference.ReferenceAttackError as exc:
        hint = ""
        if "out of memory" in str(exc).lower():
            hint = ("\nThe GPU is full; TensorFlow in this process may hold it: run with "
                    "TF_FORCE_GPU_ALLOW_GROWTH=true or a smaller --autoattack-batch-size")
        raise RuntimeError(f"{name}: {exc}{hint}") from None
    x_adv, distance = _checked_adversarial(name, out["x_adv"], x, eps)
    tf_correct = predict_labels(model, x_adv, tf_batch_size) == y
    torch_pred = np.argmax(out["clean_logits"], axis=-1)
    n = len(y)
    info = _run_info(name, "pyautoattack (reference code) on the .keras file under Keras' "
                           "torch backend; accuracy = this model re-classifying the returned "
                           "images",
                     out, distance, tf_correct, eps=eps, seed=seed, batch_size=batch_size,
                     version=version, options=options)
    info.update({
        "reference_acc": _percent(out["robust"]),
        "reference_clean_acc": _percent(torch_pred == y),
        "clean_prediction_mismatches": int(np.sum(torch_pred != clean_pred)),
        "device": out["device"],
        "versions": out["versions"],
    })
    if log is not None and (info["clean_prediction_mismatches"] or info["robust_flag_mismatches"]):
        log(f"  warning: {name}: the torch and TensorFlow models disagree on "
            f"{info['clean_prediction_mismatches']} clean and "
            f"{info['robust_flag_mismatches']} adversarial points of {n}")
    return _percent(tf_correct), info


# --------------------------------------------------------------------------------------
# A training run: best and last
# --------------------------------------------------------------------------------------
def _same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb))


def evaluate_run(run_dir: str, *, attacks=None, n_examples: int | None = None,
                 batch_size: int = 256, surrogate=None, log=None, **kwargs) -> dict:
    """Evaluate ``checkpoints/best.keras`` and ``checkpoints/last.keras`` of a training run
    and write ``eval_best.json`` / ``eval_last.json`` (atomically) in ``run_dir``.

    Dataset, data_dir, model, method and eps (the run's training threat model) come from
    the run's ``config.json``. When both checkpoints hold the same weights (the best epoch
    was the last) the suite runs once. Extra keyword arguments go to `evaluate`.
    Returns ``{"best": {...}, "last": {...}}`` (only the checkpoints that exist).
    """
    from rslad_tf.common import fileio
    from rslad_tf.methods import saving

    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{run_dir!r} holds no training run (no config.json)")
    with open(config_path) as f:
        config = json.load(f)
    kwargs.setdefault("eps", config.get("epsilon"))
    results, models = {}, {}
    for which in ("best", "last"):
        path = os.path.join(run_dir, "checkpoints", f"{which}.keras")
        if not os.path.isfile(path):
            if log:
                log(f"{path} does not exist: skipped")
            continue
        model = saving.load_model(path, what=f"{which} checkpoint")
        reuse = next((k for k, m in models.items() if _same_weights(m, model)), None)
        if reuse is not None:
            result = dict(results[reuse], checkpoint=which,
                          checkpoint_path=os.path.abspath(path), same_weights_as=reuse)
            if log:
                log(f"{which} checkpoint has the weights of {reuse}: results reused")
        else:
            result = evaluate(model, dataset=config["dataset"], data_dir=config.get("data_dir"),
                              attacks=attacks, n_examples=n_examples, batch_size=batch_size,
                              surrogate=surrogate, method=config.get("method"),
                              model_name=config.get("model"), checkpoint=which, log=log,
                              **kwargs)
            result["checkpoint_path"] = os.path.abspath(path)
        result["preset"] = config.get("preset")
        result["train_seed"] = config.get("seed")
        result["run_dir"] = os.path.abspath(run_dir)
        models[which] = model
        results[which] = result
        fileio.write_json(os.path.join(run_dir, f"eval_{which}.json"), result)
    if not results:
        raise UserError(f"{run_dir!r} has no checkpoints/best.keras or checkpoints/last.keras")
    return results


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def format_table(result: dict) -> str:
    """A readable table of one eval JSON."""
    head = (f"{result.get('checkpoint_path') or result.get('checkpoint') or result['model']}"
            f"  ({result['dataset']}, {result['model']}, {result.get('method') or '-'})\n"
            f"eps {result['eps']:.5g}, {result['n_examples']} test points, seed {result['seed']}")
    if result.get("artifact_format"):
        latency = result.get("latency") or {}
        head += (f"\n{result['artifact_format']} artifact {result.get('artifact_path')}: "
                 f"{result['size_bytes'] / 1024:.1f} KiB, {latency.get('median_ms', 0):.3f} ms "
                 f"per image at batch 1 ({latency.get('threads')} thread(s)); white-box "
                 "attacks crafted on the source checkpoint")
    lines = [head, f"{'attack':<18}{'accuracy':>10}{'seconds':>10}"]
    for name in ATTACKS:
        key = f"{name}_acc"
        if key not in result:
            continue
        line = f"{LABELS[name]:<18}{result[key]:>9.2f}%{result['seconds'].get(name, 0):>10.1f}"
        if name == "autoattack" and result.get("autoattack_per_attack"):
            steps = ", ".join(f"{k} {v:.2f}" for k, v in result["autoattack_per_attack"].items())
            line += f"   after: {steps}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m rslad_tf.evaluate",
        description="Evaluate a checkpoint with the paper's protocol (Clean, FGSM, PGD_SAT, "
                    "PGD_TRADES, CW_inf, AutoAttack; transfer and Square on request).")
    parser.add_argument("checkpoint", help=".keras file of the model to evaluate, or an "
                                           "exported artifact (SavedModel directory, .tflite, "
                                           ".onnx of `python -m rslad_tf.export`) with --source")
    parser.add_argument("--source", help="artifacts: the float .keras checkpoint it was "
                                         "exported from (the white-box attacks are crafted "
                                         "on it)")
    parser.add_argument("--threads", type=int, default=1,
                        help="artifacts: CPU threads of the LiteRT / ONNX runtime (default 1; "
                             "a SavedModel uses TensorFlow's pool)")
    parser.add_argument("--latency-repeats", type=int, default=200,
                        help="artifacts: timed calls at batch 1 for the latency (median)")
    parser.add_argument("--dataset", help="test set (default: the run's dataset when the "
                                          "checkpoint lies in a run directory, else digits)")
    parser.add_argument("--data-dir", help="local dataset files (CIFAR archives or TFDS dir)")
    parser.add_argument("--attacks", help="comma-separated list from: " + ",".join(ATTACKS)
                        + " (default: the white-box suite, plus transfer with --surrogate)")
    parser.add_argument("--n-examples", type=int, help="evaluate the first N test points")
    parser.add_argument("--batch-size", type=int, default=256, help="attack batch size")
    parser.add_argument("--eps", type=float,
                        help="L-inf radius (default: the run's, else the dataset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    parser.add_argument("--out", help="write the eval JSON here (never overwrites)")
    parser.add_argument("--surrogate", help=".keras file the transfer attacks are crafted on")
    parser.add_argument("--autoattack-batch-size", type=int,
                        help="AutoAttack's batch size (default --batch-size)")
    # Default 1: AutoAttack runs whole batches side by side, which pays only with several
    # batches per attack (docs/speed.md); a single batch is slower on one core.
    runtime.add_attack_shards_argument(
        parser, "cut each PGD batch into N pieces, and run N native AutoAttack batches, at "
                "the same time", default="1")
    parser.add_argument("--autoattack", choices=AUTOATTACK_IMPLS,
                        help="AutoAttack / Square implementation: native (TensorFlow) or "
                             f"reference (pyautoattack under PyTorch); default "
                             f"{DEFAULT_AUTOATTACK}")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    # Cheap checks first: no TensorFlow import before the input is known to be usable.
    from rslad_tf.interop import artifacts

    # An exported artifact (SavedModel, .tflite, .onnx) is evaluated by
    # `rslad_tf.evaluation.artifact_eval`, its white-box attacks crafted on --source.
    is_artifact = artifacts.is_artifact(args.checkpoint) or os.path.isdir(args.checkpoint)
    if is_artifact:
        artifacts.container_of(args.checkpoint)  # missing or unknown kind: one line
        if args.source is None:
            raise UserError("an exported artifact is evaluated against the float checkpoint "
                            "it was exported from: pass --source CKPT.keras")
        if not os.path.isfile(args.source):
            raise UserError(f"source checkpoint file {args.source!r} does not exist")
        if args.autoattack == "reference":
            raise UserError("--autoattack reference runs a .keras file under PyTorch; an "
                            "artifact is attacked by the native implementation only")
    elif not os.path.isfile(args.checkpoint):
        raise UserError(f"checkpoint file {args.checkpoint!r} does not exist")
    elif args.source is not None:
        raise UserError("--source names the checkpoint an exported artifact came from; "
                        f"{args.checkpoint!r} is not an artifact (drop --source)")
    if args.surrogate is not None and not os.path.isfile(args.surrogate):
        raise UserError(f"surrogate file {args.surrogate!r} does not exist")
    attack_shards = runtime.attack_shards_from(args)
    attacks = validate_attacks(args.attacks, args.surrogate)
    _check_numbers(args.n_examples, args.batch_size, args.eps, args.autoattack_batch_size)
    if args.out and os.path.exists(args.out):
        raise UserError(f"{args.out!r} already exists; choose another --out")
    run_config = _run_config_for(args.source if is_artifact else args.checkpoint) or {}
    dataset = args.dataset or run_config.get("dataset") or "digits"
    from rslad_tf.data import spec

    spec(dataset)  # unknown dataset: one line
    eps = args.eps
    if eps is None and dataset == run_config.get("dataset"):
        eps = run_config.get("epsilon")
    data_dir = args.data_dir or (run_config.get("data_dir")
                                 if dataset == run_config.get("dataset") else None)

    runtime.configure(attack_shards=attack_shards)
    share_gpu_memory()
    if is_artifact:
        from rslad_tf.evaluation.artifact_eval import evaluate_artifact

        result = evaluate_artifact(
            args.checkpoint, source=args.source, surrogate=args.surrogate, dataset=dataset,
            data_dir=data_dir, attacks=None if args.attacks is None else attacks,
            n_examples=args.n_examples, batch_size=args.batch_size, eps=eps, seed=args.seed,
            autoattack_batch_size=args.autoattack_batch_size, threads=args.threads,
            latency_repeats=args.latency_repeats,
            log=lambda m: print(m, file=sys.stderr, flush=True))
    else:
        result = evaluate(args.checkpoint, dataset=dataset, data_dir=data_dir,
                          attacks=attacks, n_examples=args.n_examples,
                          batch_size=args.batch_size, eps=eps, seed=args.seed,
                          surrogate=args.surrogate,
                          autoattack_batch_size=args.autoattack_batch_size,
                          autoattack=args.autoattack,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    if run_config:
        result.setdefault("preset", run_config.get("preset"))
        result.setdefault("train_seed", run_config.get("seed"))
    print(format_table(result))
    if args.out:
        from rslad_tf.common import fileio

        if os.path.exists(args.out):  # appeared while we were evaluating
            raise UserError(f"{args.out!r} already exists; choose another --out")
        fileio.write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
