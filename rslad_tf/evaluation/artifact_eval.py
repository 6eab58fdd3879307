"""The robustness of an exported artifact (`rslad_tf.interop.artifacts`), as an eval JSON.

`python -m rslad_tf.evaluate ARTIFACT --source CKPT [--surrogate S]` calls
`evaluate_artifact`. The JSON has the keys of a checkpoint's eval JSON
(`rslad_tf.evaluation.suite.evaluate`), so the report can put the float model and its artifacts
side by side, plus ``artifact_format``, ``artifact_path``, ``size_bytes``, ``latency`` and
``source_checkpoint``. What each accuracy means for an artifact:

- ``clean``: the artifact on the test images, in its own runtime.
- ``fgsm``, ``pgd_sat``, ``pgd_trades``, ``cw_inf``, ``autoattack``: the protocol's
  white-box adversarial images, crafted on the float checkpoint the artifact was exported
  from (the one PGD engine of `rslad_tf.attacks`, the native AutoAttack), classified by the
  artifact. The artifact has no gradients here (a LiteRT or ONNX runtime); the float
  model is the closest white-box attacker, and what quantisation changes shows as the
  difference from the checkpoint's own column.
- ``transfer_pgd``, ``transfer_cw``: the same crafted on a separately trained surrogate
  (``--surrogate``), as for a checkpoint.
- ``square``: the query-based Square attack (5000 queries, the native implementation in
  `rslad_tf.attacks.autoattack.square`) run on the artifact itself: it only needs its
  outputs, so it attacks exactly what ships.

The gradient-masking checks of `rslad_tf.evaluation.sanity` need the artifact's gradients and are
skipped (the ``sanity`` object says so); run them on the float checkpoint.
"""

from __future__ import annotations

import os
import time

import numpy as np

from rslad_tf.common.errors import UserError

SANITY_SKIPPED = ("an exported artifact has no input gradients here; the gradient-masking "
                  "checks belong to the float checkpoint's eval")


def default_attacks(surrogate) -> list[str]:
    """The checkpoint's default suite (white-box, transfer with a surrogate) plus Square on
    the artifact itself."""
    from rslad_tf.evaluation.suite import validate_attacks

    return validate_attacks(None, surrogate) + ["square"]


def evaluate_artifact(path: str, *, source, surrogate=None, dataset: str = "digits",
                      data_dir: str | None = None, attacks=None,
                      n_examples: int | None = None, batch_size: int = 256,
                      eps: float | None = None, seed: int = 0,
                      autoattack_batch_size: int | None = None,
                      autoattack_options: dict | None = None, threads: int = 1,
                      latency_repeats: int = 200, method: str | None = None,
                      model_name: str | None = None, checkpoint: str | None = None,
                      log=None) -> dict:
    """Evaluate the artifact at ``path``; returns its eval JSON (a dict).

    Args:
        source: the float checkpoint the artifact was exported from (a Keras model or a
            ``.keras`` path): the white-box attacks are crafted on it.
        surrogate: a Keras model or ``.keras`` path for the transfer attacks.
        attacks: names from `rslad_tf.evaluation.suite.ATTACKS`; None = `default_attacks`.
        autoattack_options: overrides of AutoAttack's and Square's hyper-parameters (smoke
            tests; recorded, and the run is then marked non-standard).
        threads: CPU threads of the LiteRT / ONNX runtime (a SavedModel runs in
            TensorFlow's pool); the latency record says how many were used.
        latency_repeats: timed calls at batch 1 (the median is reported).
        Others as in `rslad_tf.evaluation.suite.evaluate`.
    """
    from rslad_tf.interop import artifacts
    from rslad_tf.methods import saving
    from rslad_tf import attacks as attack_lib
    from rslad_tf.evaluation import suite as ev
    from rslad_tf.data import load_numpy, spec

    say = log or (lambda *_: None)
    chosen = default_attacks(surrogate) if attacks is None else ev.validate_attacks(
        attacks, surrogate)
    ev._check_numbers(n_examples, batch_size, eps, autoattack_batch_size)
    if int(latency_repeats) <= 0:
        raise UserError(f"--latency-repeats must be positive, got {latency_repeats}")
    data_spec = spec(dataset)
    eps = float(data_spec.epsilon if eps is None else eps)
    aa_batch = int(autoattack_batch_size or batch_size)

    artifact = artifacts.load(os.fspath(path), threads=threads)
    target = artifacts.ArtifactModel(artifact)
    ev._check_model_fits(target, data_spec, f"artifact {os.fspath(path)!r}")
    source_path = None
    if isinstance(source, (str, os.PathLike)):
        source_path = os.fspath(source)
        source = saving.load_model(source_path, what="source checkpoint")
    source = ev.ensure_float32(source)
    ev._check_model_fits(source, data_spec, f"source checkpoint {source_path or source.name!r}")
    surrogate_path = None
    if surrogate is not None and any(a in ev.TRANSFER for a in chosen):
        if isinstance(surrogate, (str, os.PathLike)):
            surrogate_path = os.fspath(surrogate)
            surrogate = saving.load_model(surrogate_path, what="surrogate")
        surrogate = ev.ensure_float32(surrogate)
        ev._check_model_fits(surrogate, data_spec,
                             f"surrogate {surrogate_path or surrogate.name!r}")

    x, y = load_numpy(dataset, "test", data_dir)
    if n_examples is not None:
        x, y = x[:n_examples], y[:n_examples]
    if len(x) == 0:
        raise UserError(f"the {dataset} test set is empty")

    run_config = ev._run_config_for(source_path) or {}
    crafted_on = os.path.abspath(source_path) if source_path else source.name
    result = {
        "dataset": dataset,
        "model": model_name or run_config.get("model") or source.name,
        "method": method or run_config.get("method"),
        "checkpoint": checkpoint or ev._checkpoint_label(source_path),
        "checkpoint_path": os.path.abspath(source_path) if source_path else None,
        "eps": eps,
        "n_examples": int(len(x)),
        "seed": int(seed),
        "batch_size": int(batch_size),
        # The exported network's trainable parameters (the source's, as a checkpoint's
        # eval records them; int8 stores each in one byte).
        "params": int(sum(np.prod(w.shape) for w in source.trainable_weights)),
        "autoattack_impl": "native",
        "attacks": {},
        "seconds": {},
        "artifact_format": artifact.format,
        "artifact_path": os.path.abspath(os.fspath(path)),
        "source_checkpoint": crafted_on,
        "size_bytes": artifact.size_bytes,
    }
    if surrogate_path is not None:
        result["surrogate"] = os.path.abspath(surrogate_path)
    say(f"evaluating the {artifact.format} artifact {os.fspath(path)} ({artifact.runtime}) on "
        f"{len(x)} {dataset} test points, eps {eps:.5g}: {', '.join(chosen)}")

    for name in chosen:
        started = time.time()
        if name == "clean":
            acc = ev._percent(ev.predict_labels(target, x, batch_size) == y)
            result["attacks"]["clean"] = {"attack": "none"}
        elif name in attack_lib.PROTOCOL or name in ev.TRANSFER:
            protocol_name = ev.TRANSFER.get(name, name)
            settings = attack_lib.PROTOCOL[protocol_name]
            attacker = surrogate if name in ev.TRANSFER else source
            acc = ev._percent(ev.correct_under_attack(
                target, x, y, attack=settings, eps=eps, batch_size=batch_size, seed=seed,
                source_model=attacker))
            record = dict(settings.describe(eps), seed=int(seed), batch_size=int(batch_size))
            if name in ev.TRANSFER:
                record.update(crafted_on=result.get("surrogate") or surrogate.name,
                              protocol_attack=protocol_name)
            else:
                record["crafted_on"] = crafted_on
            result["attacks"][name] = record
        else:  # autoattack (crafted on the source) or square (on the artifact)
            acc, info = _autoattack_or_square(name, target, source, x, y, eps=eps, seed=seed,
                                              batch_size=aa_batch, tf_batch_size=batch_size,
                                              options=autoattack_options, log=log)
            if name == "autoattack":
                info["crafted_on"] = crafted_on
                result["autoattack_per_attack"] = info["per_attack"]
            result["attacks"][name] = info
        seconds = time.time() - started
        result[f"{name}_acc"] = acc
        result["seconds"][name] = round(seconds, 3)
        say(f"  {ev.LABELS[name]:<16} {acc:6.2f}%   ({seconds:.1f} s)")
    result["latency"] = artifacts.latency(artifact, x[:1], repeats=int(latency_repeats))
    say(f"  latency at batch 1: {result['latency']['median_ms']:.3f} ms (median of "
        f"{latency_repeats} calls, {artifact.threads} thread(s)); size "
        f"{artifact.size_bytes / 1024:.1f} KiB")
    result["sanity"] = {"n_points": 0, "zero_gradient_fraction": None,
                        "pgd_accuracy_by_steps": None, "warnings": [],
                        "skipped": SANITY_SKIPPED}
    return result


def _autoattack_or_square(name, target, source, x, y, *, eps, seed, batch_size,
                          tf_batch_size, options, log):
    """AutoAttack's images crafted on the float ``source`` ("autoattack"), or Square run
    on the artifact ``target`` ("square"), both native; the artifact classifies the
    returned images. Returns (accuracy %, the eval JSON's record)."""
    from rslad_tf.evaluation import suite as ev
    from rslad_tf.attacks import autoattack as native

    version, attack_names, options = ev._run_settings(name, "standard", None, options)
    try:
        native.resolve(version, attack_names, options)
    except ValueError as exc:
        raise UserError(f"{name}: {exc}") from None
    if name == "square":
        # The artifact's runtime is called through tf.numpy_function: no XLA.
        out = native.run(target, x, y, eps=eps, seed=seed, batch_size=batch_size,
                         version=version, attacks=attack_names, options=options, log=log,
                         jit_compile=False)
        how = ("native TensorFlow Square (rslad_tf.attacks.autoattack) querying the artifact "
               "in its own runtime; accuracy = the artifact re-classifying the returned images")
    else:
        out = native.run(source, x, y, eps=eps, seed=seed, batch_size=batch_size,
                         version=version, attacks=attack_names, options=options, log=log)
        how = ("native TensorFlow AutoAttack (rslad_tf.attacks.autoattack) on the float "
               "source checkpoint; accuracy = the artifact classifying the returned images "
               "(per_attack: the source's robust accuracy after each attack)")
    x_adv, distance = ev._checked_adversarial(name, out["x_adv"], x, eps)
    correct = ev.predict_labels(target, x_adv, tf_batch_size) == y
    info = ev._run_info(name, how, out, distance, correct, eps=eps, seed=seed,
                        batch_size=batch_size, version=version, options=options)
    info["jit_compile"] = bool(out["jit_compile"])
    return ev._percent(correct), info
