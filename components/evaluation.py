"""Shared by the evaluation components: one call of `rslad_tf.evaluation.suite.evaluate` on a
Model artifact, the eval JSON written to the output artifact."""

from __future__ import annotations

import json
import os
import time

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
                   autoattack_impl: str = "", recorded_autoattack: str = "",
                   recorded_autoattack_sha256: str = "", sanity_checks: bool = True,
                   log=print) -> dict:
    """Evaluate the Model artifact of ``model_dir`` with the attacks ``attacks`` and write
    the eval JSON to ``out_file``. ``recorded_autoattack``: the URI of an eval JSON of the
    same model file whose AutoAttack column this run may take instead of running it
    (`rslad_tf.evaluation.recorded` says when it applies; else AutoAttack runs), pinned
    by ``recorded_autoattack_sha256`` when given. ``sanity_checks``: measure the model's
    gradient-masking symptoms (`rslad_tf.evaluation.sanity`) into the JSON."""
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
    record = None
    if (recorded_autoattack or "").strip() and "autoattack" in names:
        record, record_sha256 = fetch_record(recorded_autoattack, recorded_autoattack_sha256)
    from rslad_tf.evaluation.suite import evaluate

    log = tagged(log, info.get("method") or info.get("role") or "model")
    extra = {"autoattack_options": options} if options else {}
    if autoattack_impl:
        extra["autoattack"] = autoattack_impl
    common = dict(dataset=manifest["dataset"], data_dir=manifest.get("data_dir"),
                  n_examples=int(n_examples) or None, batch_size=int(batch_size),
                  eps=float(epsilon) or None, seed=int(seed), method=info.get("method"),
                  model_name=info.get("model_name"), checkpoint=info.get("checkpoint"),
                  log=log, **extra)
    live_names = [n for n in names if n != "autoattack"] if record is not None else names
    # The surrogate's artifact may hold its transfer images, crafted once by the step
    # that trained it (`craft_transfer_examples`); the suite checks that they apply.
    result = dict(evaluate(keras_path, attacks=live_names, surrogate=surrogate_path,
                           sanity_checks=sanity_checks,
                           transfer_examples=surrogate_dir if surrogate_path else None,
                           **common))
    if record is not None:
        from rslad_tf.evaluation import recorded

        why_not = recorded.mismatch(record, result, model_sha256=info.get("sha256"),
                                    eps=result["eps"], options=options)
        if why_not is None:
            result = recorded.merge(result, record, source=recorded_autoattack.strip(),
                                    record_sha256=record_sha256)
            log(f"  {'AA':<16} {result['autoattack_acc']:6.2f}%   (recorded: "
                f"{recorded_autoattack.strip()}; the other columns agree with it)")
        else:
            log(f"  the recorded AutoAttack result does not apply: {why_not}; running it")
            measured = evaluate(keras_path, attacks=["autoattack"], sanity_checks=False,
                                **common)
            result = _with_column(result, measured, "autoattack")
    result["model_sha256"] = info.get("sha256")
    result.update(run_identity(info))
    if surrogate_path:
        result["surrogate_model"] = surrogate_info.get("model_name")
        result["surrogate_sha256"] = surrogate_info.get("sha256")
    fileio.write_json(out_file, result)
    return result


def craft_transfer_examples(dataset_dir: str, model_dir: str, *, attacks: str,
                            n_examples: int = 0, epsilon: float = 0.0,
                            batch_size: int = 256, seed: int = 0, log=print) -> dict | None:
    """Craft the transfer images of ``attacks``' transfer columns on the Model artifact of
    ``model_dir`` (a surrogate) and store them in that artifact
    (`rslad_tf.evaluation.transfer`), with the settings the evaluation steps use
    (``n_examples``, ``epsilon``, ``batch_size``, ``seed`` as for `run_evaluation`). Every
    student's black-box step then reads them instead of crafting the same images again.
    Returns the bundle's settings; None when ``attacks`` has no transfer column."""
    from rslad_tf.common import vocabulary
    from rslad_tf.data import load_numpy, spec
    from rslad_tf.evaluation import transfer

    from components.common import BLACKBOX_ATTACKS

    columns = [a for a in parse_list(attacks, BLACKBOX_ATTACKS, "attack")
               if a in vocabulary.TRANSFER_COLUMNS] if str(attacks).strip() else []
    if not columns:
        return None
    manifest = read_dataset(dataset_dir)
    surrogate, keras_path, info = load_model_artifact(model_dir, "surrogate")
    check_model_fits(surrogate, manifest, keras_path, "surrogate")
    x, y = load_numpy(manifest["dataset"], "test", manifest.get("data_dir"))
    if int(n_examples):
        x, y = x[:int(n_examples)], y[:int(n_examples)]
    eps = float(epsilon) or spec(manifest["dataset"]).epsilon
    made_with = transfer.settings(columns, x=x, y=y, eps=eps, seed=seed,
                                  batch_size=batch_size, surrogate_sha256=info.get("sha256"))
    started = time.time()
    transfer.save(model_dir, transfer.craft(surrogate, x, y, columns, eps=eps, seed=seed,
                                            batch_size=batch_size), made_with)
    tagged(log, info.get("role") or "surrogate")(
        f"transfer images for {', '.join(columns)} on {len(x)} test points, eps {eps:.5g}, "
        f"crafted once for every black-box step ({time.time() - started:.1f} s)")
    return made_with


def fetch_record(uri: str, expected_sha256: str = "") -> tuple[dict, str]:
    """(the eval JSON at ``uri``, its SHA-256), checked against ``expected_sha256`` when
    one is given; one-line errors for a missing, altered or unreadable record."""
    import tempfile

    from rslad_tf.common import fileio
    from rslad_tf.evaluation import recorded

    from components.common import fetch, normalise_sha256

    expected = normalise_sha256(expected_sha256, "recorded_autoattack_sha256")
    with tempfile.TemporaryDirectory(prefix="rslad_tf-record-") as tmp:
        local = os.path.join(tmp, "record.json")
        fetch(uri.strip(), local, "recorded evaluation")
        digest = fileio.sha256(local)
        if expected and digest != expected:
            raise UserError(f"recorded evaluation {uri.strip()!r} has SHA-256 {digest}, not "
                            f"the expected {expected}: it changed since it was pinned")
        return recorded.load(local), digest


def _with_column(result: dict, measured: dict, key: str) -> dict:
    """``result`` with column ``key`` (accuracy, settings, seconds, per-attack) of the
    eval JSON ``measured``."""
    from rslad_tf.common import vocabulary

    out = dict(result)
    json_key = vocabulary.COLUMNS_BY_KEY[key].json_key
    out[json_key] = measured[json_key]
    for name in ("attacks", "seconds"):
        out[name] = dict(out.get(name) or {}, **{key: measured[name][key]})
    if measured.get("autoattack_per_attack") is not None:
        out["autoattack_per_attack"] = measured["autoattack_per_attack"]
    return out


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
