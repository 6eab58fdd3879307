"""Shared by the evaluation components: one call of `rslad_tf.evaluation.suite.evaluate` on a
Model artifact, the eval JSON written to the output artifact."""

from __future__ import annotations

import json

from components.common import check_model_fits, parse_list, read_dataset, tagged
from components.training import load_model_artifact
from rslad_tf.common.errors import UserError

ACC_SUFFIX = "_acc"
# Implementations of AutoAttack and Square in rslad_tf.evaluation.suite ("" = its default).
AUTOATTACK_IMPLS = ("", "native", "reference")


def parse_reference_options(text: str, what: str = "autoattack_options") -> dict:
    """``'{"n_queries": 100}'`` -> dict of overrides of the reference AutoAttack / Square
    hyper-parameters ("" -> {}: the standard settings). For smoke tests only: the eval JSON
    records them and marks the run as not standard."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{what} {text!r} is not a JSON object ({exc})") from None
    if not isinstance(options, dict):
        raise UserError(f"{what} {text!r} is not a JSON object")
    from rslad_tf.attacks.autoattack.request import OPTION_KEYS

    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise UserError(f"unknown {what} {', '.join(unknown)}; choose from "
                        f"{', '.join(OPTION_KEYS)}")
    return options


def run_evaluation(dataset_dir: str, model_dir: str, out_file: str, *, attacks: str,
                   allowed, surrogate_dir: str = "", n_examples: int = 0,
                   epsilon: float = 0.0, batch_size: int = 256, seed: int = 0,
                   reference_options: str = "", options_name: str = "autoattack_options",
                   autoattack_impl: str = "", log=print) -> dict:
    from rslad_tf.common import fileio

    names = parse_list(attacks, allowed, "attack")
    options = parse_reference_options(reference_options, options_name)
    if autoattack_impl not in AUTOATTACK_IMPLS:
        raise UserError(f"unknown autoattack_impl {autoattack_impl!r}; choose native or "
                        "reference (empty: the evaluation suite's default)")
    if int(n_examples) < 0:
        raise UserError(f"n_examples must be 0 (all) or positive, got {n_examples}")
    if not 0.0 <= float(epsilon) <= 1.0:
        raise UserError(f"epsilon must be in (0, 1] (0: the dataset's), got {epsilon}")
    if int(batch_size) <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    manifest = read_dataset(dataset_dir)
    model, keras_path, info = load_model_artifact(model_dir, "model")
    check_model_fits(model, manifest, keras_path)
    del model
    surrogate_path, surrogate_info = None, {}
    needs_surrogate = [a for a in names if a.startswith("transfer_")]
    if needs_surrogate:
        if not surrogate_dir:
            raise UserError(f"attack {needs_surrogate[0]} transfers from a surrogate model: "
                            "pass a surrogate Model artifact")
        surrogate, surrogate_path, surrogate_info = load_model_artifact(surrogate_dir,
                                                                        "surrogate")
        check_model_fits(surrogate, manifest, surrogate_path, "surrogate")
        del surrogate
        if surrogate_info.get("sha256") and surrogate_info.get("sha256") == info.get("sha256"):
            raise UserError("the surrogate is the evaluated model itself: a transfer attack "
                            "needs a separately trained model")
    from rslad_tf.evaluation.suite import evaluate

    log = tagged(log, info.get("method") or info.get("role") or "model")
    extra = {"autoattack_options": options} if options else {}
    if autoattack_impl:
        extra["autoattack"] = autoattack_impl
    result = evaluate(keras_path, dataset=manifest["dataset"], data_dir=manifest.get("data_dir"),
                      attacks=names, n_examples=int(n_examples) or None,
                      batch_size=int(batch_size), eps=float(epsilon) or None, seed=int(seed),
                      surrogate=surrogate_path, method=info.get("method"),
                      model_name=info.get("model_name"), checkpoint=info.get("checkpoint"),
                      log=log, **extra)
    result = dict(result)
    result["model_sha256"] = info.get("sha256")
    result.update(run_identity(info))
    if surrogate_path:
        result["surrogate_model"] = surrogate_info.get("model_name")
        result["surrogate_sha256"] = surrogate_info.get("sha256")
    fileio.write_json(out_file, result)
    return result


def run_identity(info: dict) -> dict:
    """What tells the runs of a sweep apart in an eval JSON, from the model's artifact
    info: its training seed and, for a grid cell, the cell's label (the report groups on
    it and lists every seed's row)."""
    identity = {"train_seed": info.get("seed")}
    if info.get("grid_cell"):
        identity["grid_cell"] = info["grid_cell"]
    return identity


def log_metrics(metrics, result: dict) -> None:
    """Accuracies (percent) of an eval JSON into a kfp Metrics artifact."""
    for key, value in result.items():
        if key.endswith(ACC_SUFFIX) and isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))


def publish(result: dict, results, metrics, kind: str) -> None:
    """An evaluation step's outputs: the accuracies as kfp Metrics, and the results
    artifact labelled with the model's method and name and the evaluation ``kind``."""
    log_metrics(metrics, result)
    results.metadata.update({"method": result.get("method") or "",
                             "model": result.get("model") or "", "kind": kind})
