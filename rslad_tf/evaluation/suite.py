"""The paper's evaluation suite (docs/paper.md section 3) -> eval JSON (its command line
is `rslad_tf.evaluation.cli`, ``python -m rslad_tf.evaluate``).

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

Each column (`rslad_tf.common.vocabulary.EVAL_COLUMNS`) has one runner in ``RUNNERS``.
The model that classifies (whose accuracy is reported) may be another than the one the
white-box attacks are crafted on: an exported artifact classifies, its float checkpoint
crafts (`rslad_tf.evaluation.artifact_eval`). `rslad_tf.evaluation.core` holds the small
core shared with training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from rslad_tf.common import fileio, vocabulary
from rslad_tf.common.errors import UserError
from rslad_tf.evaluation.core import correct_under_attack, predict_labels
from rslad_tf.evaluation.result import EvalResult
from rslad_tf.transforms.precision import ensure_float32

SQUARE_QUERIES = 5000
# The AutoAttack / Square implementations (`evaluate(autoattack=...)`, ``--autoattack``).
AUTOATTACK_IMPLS = ("native", "reference")
# Native by default: it agreed with the reference within 0.5 points on every verification
# run on all 1,797 digits points (docs/evaluation-and-autoattack.md); PyTorch is then
# needed only for `--autoattack reference` and `python -m rslad_tf.verify_autoattack`.
DEFAULT_AUTOATTACK = "native"
# A returned adversarial image may sit this far outside the eps ball (float32 rounding).
BALL_TOLERANCE = 1e-5
MISMATCH_FIX = "pass the right --dataset"


# --------------------------------------------------------------------------------------
# Checks of a request
# --------------------------------------------------------------------------------------
def _percent(flags) -> float:
    return 100.0 * float(np.mean(flags))


def _checkpoint_label(path: str | None) -> str | None:
    if path is None:
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    return stem if stem in ("best", "last") else path


def validate_attacks(attacks, surrogate) -> list[str]:
    """The attacks to run in canonical order; `UserError` for unknown names."""
    known = vocabulary.COLUMN_KEYS
    transfer = vocabulary.TRANSFER_COLUMNS
    if attacks is None:
        chosen = list(vocabulary.WHITE_BOX_SUITE) + (list(transfer) if surrogate is not None
                                                      else [])
    else:
        if isinstance(attacks, str):
            attacks = [a for a in attacks.split(",")]
        attacks = [a.strip() for a in attacks if a.strip()]
        unknown = [a for a in attacks if a not in known]
        if unknown:
            raise UserError(f"unknown attack(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(known)}")
        if not attacks:
            raise UserError(f"no attack given; choose from {', '.join(known)}")
        chosen = [a for a in known if a in attacks]
    if surrogate is None and any(a in transfer for a in chosen):
        raise UserError("transfer attacks need a surrogate model: pass --surrogate PATH")
    return chosen


def check_numbers(n_examples, batch_size, eps, autoattack_batch_size) -> None:
    """`UserError` naming the first of the suite's numbers that is out of range."""
    if n_examples is not None and (not isinstance(n_examples, (int, np.integer))
                                   or n_examples <= 0):
        raise UserError(f"--n-examples must be a positive integer, got {n_examples}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
    if autoattack_batch_size is not None and autoattack_batch_size <= 0:
        raise UserError(f"the AutoAttack batch size must be positive, got {autoattack_batch_size}")
    if eps is not None and not (np.isfinite(eps) and 0.0 < eps <= 1.0):
        raise UserError(f"--eps must be in (0, 1] (images are in [0,1]), got {eps}")


def _check_impl(autoattack) -> str:
    impl = DEFAULT_AUTOATTACK if autoattack is None else autoattack
    if impl not in AUTOATTACK_IMPLS:
        raise UserError(f"unknown AutoAttack implementation {impl!r}; choose one of "
                        f"{', '.join(AUTOATTACK_IMPLS)}")
    return impl


# --------------------------------------------------------------------------------------
# The attack runners: one per column
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """What every runner reads: the models, the points and the settings of one `evaluate`."""

    classifier: object  # classifies every image: its accuracy is the one reported
    attacker: object  # the float32 Keras model the white-box attacks are crafted on
    crafted_on: str | None  # the attacker's name when it is not the classifier, else None
    surrogate: object  # the float32 Keras model the transfer attacks are crafted on
    surrogate_name: str | None
    x: np.ndarray
    y: np.ndarray
    eps: float
    seed: int
    batch_size: int  # our attacks' and the re-classification's
    aa_batch_size: int  # AutoAttack's and Square's
    impl: str  # AutoAttack's and Square's implementation: "native" or "reference"
    version: str  # AutoAttack's version, attacks of a "custom" one, option overrides
    aa_attacks: list | None
    options: dict | None
    threads: int | None  # torch CPU threads of the reference child
    log: object
    reference_file: object  # () -> the .keras file the reference implementation loads
    clean_pred: np.ndarray | None = None
    # Transfer images crafted before this evaluation (`rslad_tf.evaluation.transfer`):
    # (its settings, its arrays), and the settings this evaluation would craft with.
    transfer_bundle: tuple | None = None
    transfer_wanted: dict | None = None

    def clean_predictions(self) -> np.ndarray:
        if self.clean_pred is None:
            self.clean_pred = predict_labels(self.classifier, self.x, self.batch_size)
        return self.clean_pred


def _clean(run: _Run, name: str):
    return _percent(run.clean_predictions() == run.y), {"attack": "none"}


def _protocol(run: _Run, name: str):
    """A white-box column of `rslad_tf.attacks.PROTOCOL`, crafted on the attacker."""
    from rslad_tf.attacks import PROTOCOL

    settings = PROTOCOL[name]
    acc = _percent(correct_under_attack(run.classifier, run.x, run.y, attack=settings,
                                        eps=run.eps, batch_size=run.batch_size, seed=run.seed,
                                        source_model=run.attacker))
    record = dict(settings.describe(run.eps), seed=int(run.seed),
                  batch_size=int(run.batch_size))
    if run.crafted_on is not None:
        record["crafted_on"] = run.crafted_on
    return acc, record


def _transfer(run: _Run, name: str):
    """The white-box protocol attack the column transfers, crafted on the surrogate."""
    from rslad_tf.attacks import PROTOCOL
    from rslad_tf.evaluation import transfer

    protocol_attack = vocabulary.COLUMNS_BY_KEY[name].transfers
    settings = PROTOCOL[protocol_attack]
    record = dict(settings.describe(run.eps), seed=int(run.seed),
                  batch_size=int(run.batch_size), crafted_on=run.surrogate_name,
                  protocol_attack=protocol_attack)
    if run.transfer_bundle is not None:
        made_with, arrays = run.transfer_bundle
        why_not = transfer.mismatch(made_with, run.transfer_wanted, name)
        if why_not is None:
            # The very images this runner would craft (same surrogate file, points, attack,
            # eps, seed and batch size), crafted once for every model evaluated against them.
            record["crafted"] = "before this evaluation, once for every evaluated model"
            return _percent(predict_labels(run.classifier, arrays[name], run.batch_size)
                            == run.y), record
        if run.log:
            run.log(f"  the transfer images crafted beforehand do not apply ({why_not}): "
                    f"crafting {name} here")
    acc = _percent(correct_under_attack(run.classifier, run.x, run.y, attack=settings,
                                        eps=run.eps, batch_size=run.batch_size, seed=run.seed,
                                        source_model=run.surrogate))
    return acc, record


def _autoattack_code(run: _Run, name: str):
    """AutoAttack ("autoattack") or Square ("square"), in the chosen implementation."""
    if run.impl == "native":
        return _native_attack(run, name)
    return _reference_attack(run, name)


RUNNERS = {
    "clean": _clean,
    "fgsm": _protocol,
    "pgd_sat": _protocol,
    "pgd_trades": _protocol,
    "cw_inf": _protocol,
    "autoattack": _autoattack_code,
    "transfer_pgd": _transfer,
    "transfer_cw": _transfer,
    "square": _autoattack_code,
}

# What the eval JSON says a native run was: (column, crafted on another model than the
# classifier) -> description.
_NATIVE_DESCRIPTION = {
    ("autoattack", False): "native TensorFlow (rslad_tf.attacks.autoattack); accuracy = this "
                           "model re-classifying the returned images",
    ("square", False): "native TensorFlow (rslad_tf.attacks.autoattack); accuracy = this "
                       "model re-classifying the returned images",
    ("autoattack", True): "native TensorFlow AutoAttack (rslad_tf.attacks.autoattack) on the "
                          "float source checkpoint; accuracy = the artifact classifying the "
                          "returned images (per_attack: the source's robust accuracy after "
                          "each attack)",
    ("square", True): "native TensorFlow Square (rslad_tf.attacks.autoattack) querying the "
                      "artifact in its own runtime; accuracy = the artifact re-classifying "
                      "the returned images",
}


def _native_attack(run: _Run, name: str):
    """Run AutoAttack or Square natively; the classifier classifies the returned images.
    AutoAttack is crafted on the attacker; Square only queries, so it runs on the
    classifier itself. Returns (accuracy %, settings dict)."""
    from rslad_tf.attacks import autoattack as native

    version, attacks, options = _run_settings(name, run.version, run.aa_attacks, run.options)
    try:
        native.resolve(version, attacks, options)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None
    separate = run.crafted_on is not None
    target = run.classifier if name == "square" else run.attacker
    # A separate classifier (an artifact's runtime through tf.numpy_function): no XLA.
    jit = {"jit_compile": False} if separate and name == "square" else {}
    out = native.run(target, run.x, run.y, eps=run.eps, seed=run.seed,
                     batch_size=run.aa_batch_size, version=version, attacks=attacks,
                     options=options, log=run.log, **jit)
    x_adv, distance = _checked_adversarial(name, out["x_adv"], run.x, run.eps)
    tf_correct = predict_labels(run.classifier, x_adv, run.batch_size) == run.y
    info = _run_info(name, _NATIVE_DESCRIPTION[name, separate], out, distance, tf_correct,
                     eps=run.eps, seed=run.seed, batch_size=run.aa_batch_size,
                     version=version, options=options)
    info["jit_compile"] = bool(out["jit_compile"])
    if separate and name == "autoattack":
        info["crafted_on"] = run.crafted_on
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


def _reference_attack(run: _Run, name: str):
    """Run AutoAttack ("autoattack") or Square ("square") through the torch backend and
    re-classify the returned images with the classifier. Returns (accuracy %, settings
    dict)."""
    import importlib.util

    from rslad_tf.attacks.autoattack import reference as reference

    model, x, y, eps, seed = run.classifier, run.x, run.y, run.eps, run.seed
    batch_size, log = run.aa_batch_size, run.log
    missing = [m for m in ("torch", "pyautoattack") if importlib.util.find_spec(m) is None]
    if missing:
        label = vocabulary.COLUMNS_BY_KEY[name].label
        raise UserError(f"{label} runs the reference code under PyTorch, but "
                        f"{' and '.join(missing)} is not installed: `pip install -r "
                        "requirements-dev.txt` (or `pip install rslad_tf[autoattack]`), or "
                        "use --autoattack native")
    version, attacks, options = _run_settings(name, run.version, run.aa_attacks, run.options)
    path = run.reference_file()
    clean_pred = run.clean_predictions()
    try:
        out = reference.run(path, x, y, eps=eps, version=version, attacks=attacks, seed=seed,
                            batch_size=batch_size, options=options, threads=run.threads,
                            log=log)
    except reference.ReferenceAttackError as exc:
        hint = ""
        if "out of memory" in str(exc).lower():
            hint = ("\nThe GPU is full; TensorFlow in this process may hold it: run with "
                    "TF_FORCE_GPU_ALLOW_GROWTH=true or a smaller --autoattack-batch-size")
        raise RuntimeError(f"{name}: {exc}{hint}") from None
    x_adv, distance = _checked_adversarial(name, out["x_adv"], x, eps)
    tf_correct = predict_labels(model, x_adv, run.batch_size) == y
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
# The suite
# --------------------------------------------------------------------------------------
def evaluate(model, *, classifier=None, dataset: str = "digits", data_dir: str | None = None,
             attacks=None, n_examples: int | None = None, batch_size: int = 256,
             eps: float | None = None, seed: int = 0, surrogate=None,
             autoattack_batch_size: int | None = None, method: str | None = None,
             model_name: str | None = None, checkpoint: str | None = None, log=None,
             autoattack_version: str = "standard", autoattack_attacks=None,
             autoattack_options: dict | None = None, autoattack_threads: int | None = None,
             sanity_checks: bool = True, autoattack: str | None = None,
             subject: str | None = None, transfer_examples: str | None = None) -> dict:
    """Evaluate ``model`` with the paper's protocol; returns the eval JSON (a dict, see
    `rslad_tf.evaluation.result.EvalResult`).

    Args:
        model: a Keras model or the path of a ``.keras`` file.
        classifier: None (``model`` classifies), or another model that classifies every
            image, called as ``classifier(x, training=False)`` without gradients (an
            exported artifact's runtime, `rslad_tf.interop.artifacts.ArtifactModel`,
            checked against the dataset by the caller): the white-box attacks and
            AutoAttack are then crafted on ``model`` (their records say ``crafted_on``),
            Square queries the classifier itself without XLA, the reference
            implementation is refused and the sanity checks are skipped.
        dataset, data_dir: the test set (``rslad_tf.data.load_numpy(dataset, "test")``).
        attacks: column keys (`rslad_tf.common.vocabulary.COLUMN_KEYS`); None = the
            white-box suite plus the transfer attacks when ``surrogate`` is given.
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
        subject: what the progress log calls the evaluated model (default: its checkpoint
            label or name).
        transfer_examples: a folder that may hold transfer images crafted beforehand on
            the surrogate file (`rslad_tf.evaluation.transfer`): a transfer column reads
            them when they are what it would craft itself (same surrogate file, points,
            attack, eps, seed and batch size), and crafts its own otherwise.
    """
    from rslad_tf.data import check_model_fits, load_numpy, spec
    from rslad_tf import models
    from rslad_tf.methods import saving

    say = log or (lambda *_: None)
    chosen = validate_attacks(attacks, surrogate)
    check_numbers(n_examples, batch_size, eps, autoattack_batch_size)
    impl = _check_impl(autoattack)
    if (classifier is not None and impl == "reference"
            and any(a in vocabulary.AUTOATTACK_COLUMNS for a in chosen)):
        raise UserError("the reference AutoAttack runs a .keras file under PyTorch; a "
                        "separate classifier (an exported artifact) is attacked by the "
                        "native implementation only: use autoattack='native'")
    data_spec = spec(dataset)
    eps = float(data_spec.epsilon if eps is None else eps)
    # An exported artifact is evaluated against the checkpoint it was exported from.
    role = "checkpoint" if classifier is None else "source checkpoint"

    checkpoint_path = None
    if isinstance(model, (str, os.PathLike)):
        checkpoint_path = os.fspath(model)
        model = saving.load_model(checkpoint_path, what=role)
    as_given = model
    model = ensure_float32(model)
    check_model_fits(model, data_spec, f"{role} {checkpoint_path or model.name!r}",
                     MISMATCH_FIX, require_shapes=False)
    surrogate_path = None
    if surrogate is not None and any(a in vocabulary.TRANSFER_COLUMNS for a in chosen):
        if isinstance(surrogate, (str, os.PathLike)):
            surrogate_path = os.fspath(surrogate)
            surrogate = saving.load_model(surrogate_path, what="surrogate")
        surrogate = ensure_float32(surrogate)
        check_model_fits(surrogate, data_spec,
                         f"surrogate {surrogate_path or surrogate.name!r}", MISMATCH_FIX,
                         require_shapes=False)

    x, y = load_numpy(dataset, "test", data_dir)
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    n = len(x)
    if n == 0:
        raise UserError(f"the {dataset} test set is empty")

    run_config = fileio.run_config_of(checkpoint_path) or {}
    result = EvalResult(
        dataset=dataset,
        model=model_name or run_config.get("model") or model.name,
        method=method or run_config.get("method"),
        checkpoint=checkpoint or _checkpoint_label(checkpoint_path),
        checkpoint_path=os.path.abspath(checkpoint_path) if checkpoint_path else None,
        # Which file was evaluated, whatever its path: a recorded evaluation is matched to
        # a model by it (`rslad_tf.evaluation.recorded`).
        model_sha256=(fileio.sha256(checkpoint_path)
                      if checkpoint_path and os.path.isfile(checkpoint_path) else None),
        eps=eps,
        n_examples=n,
        params=models.trainable_parameters(model),
        seed=int(seed),
        batch_size=int(batch_size),
        autoattack_impl=impl,
        surrogate=os.path.abspath(surrogate_path) if surrogate_path is not None else None,
    )
    say(f"evaluating {subject or result.checkpoint or result.model} on {n} {dataset} test "
        f"points, eps {eps:.5g}: {', '.join(chosen)}")

    with tempfile.TemporaryDirectory(prefix="rslad_tf-eval-") as tmp:
        def reference_file() -> str:
            # The checkpoint itself, unless it had to be rebuilt in float32 (then the
            # float32 copy is saved for the child process, once).
            if model is as_given and checkpoint_path is not None:
                return checkpoint_path
            path = os.path.join(tmp, "model.keras")
            if not os.path.isfile(path):
                saving.save_model(model, path)
            return path

        run = _Run(
            classifier=model if classifier is None else classifier, attacker=model,
            crafted_on=(None if classifier is None
                        else os.path.abspath(checkpoint_path) if checkpoint_path
                        else model.name),
            surrogate=surrogate, surrogate_name=result.surrogate or getattr(
                surrogate, "name", None),
            x=x, y=y, eps=eps, seed=seed, batch_size=batch_size,
            aa_batch_size=int(autoattack_batch_size or batch_size), impl=impl,
            version=autoattack_version, aa_attacks=autoattack_attacks,
            options=autoattack_options, threads=autoattack_threads, log=log,
            reference_file=reference_file)
        if transfer_examples and any(a in vocabulary.TRANSFER_COLUMNS for a in chosen):
            from rslad_tf.evaluation import transfer

            run.transfer_bundle = transfer.load(transfer_examples)
            run.transfer_wanted = transfer.settings(
                [a for a in chosen if a in vocabulary.TRANSFER_COLUMNS], x=x, y=y, eps=eps,
                seed=seed, batch_size=batch_size,
                surrogate_sha256=fileio.sha256(surrogate_path) if surrogate_path else None)
        for name in chosen:
            started = time.time()
            acc, record = RUNNERS[name](run, name)
            seconds = time.time() - started
            result.accuracy[name] = acc
            result.attacks[name] = record
            result.seconds[name] = round(seconds, 3)
            if name == "autoattack":
                result.autoattack_per_attack = record["per_attack"]
            say(f"  {vocabulary.COLUMNS_BY_KEY[name].label:<16} {acc:6.2f}%   "
                f"({seconds:.1f} s)")
    if sanity_checks:
        from rslad_tf.evaluation import sanity

        if classifier is None:
            result.sanity = sanity.check(model, x, y, result.to_json(), eps=eps,
                                         batch_size=batch_size, seed=seed)
        else:
            result.sanity = sanity.skipped(sanity.NO_GRADIENTS)
        for warning in result.sanity["warnings"]:
            say(f"  warning: {warning}")
    return result.to_json()


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
