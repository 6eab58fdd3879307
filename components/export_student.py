"""export_student: export a distilled student in the formats asked for (SavedModel, LiteRT
float or int8, ONNX; `rslad_tf.interop.export`), and evaluate each artifact as it ships
(`rslad_tf.evaluation.artifact_eval`): clean accuracy, the protocol's white-box images
crafted on the float student, the transfer attacks from the surrogate, Square on the
artifact itself, its size and CPU latency. With no formats the step exports nothing (and starts no
TensorFlow)."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.common import component
from rslad_tf.common import vocabulary

# The step's default columns: every one but AutoAttack.
DEFAULT_ATTACKS = ",".join(k for k in vocabulary.COLUMN_KEYS if k != "autoattack")
# The file name of each format inside the exports artifact.
FILE_NAMES = {"saved_model": "saved_model", "litert": "model.tflite",
              "litert-int8": "model_int8.tflite", "onnx": "model.onnx"}
EXPORTS_FILE = "exports.json"


def parse_formats(text: str) -> list[str]:
    """``"litert, litert-int8"`` -> the formats, each checked; ``""`` -> [] (no export)."""
    from rslad_tf.interop.artifacts import FORMATS
    from rslad_tf.common.errors import UserError

    from components.common import parse_list

    if not str(text or "").strip():
        return []
    formats = parse_list(text, FORMATS, "export format")
    if len(set(formats)) != len(formats):
        raise UserError(f"export formats list one twice: {text}")
    return formats


def export_student_fn(dataset_dir: str, model_dir: str, surrogate_dir: str, out_dir: str,
                      results_file: str, *, formats: str = "", attacks: str = DEFAULT_ATTACKS,
                      n_examples: int = 0, epsilon: float = 0.0, batch_size: int = 256,
                      seed: int = 0, square_options: str = "", log=print) -> list:
    """Export the model of ``model_dir`` into ``out_dir`` (one file or directory per
    format, and ``exports.json``) and write the artifacts' eval JSONs, a list, to
    ``results_file``; returns that list. ``square_options``: JSON overrides of Square's
    settings as for evaluate_blackbox (e.g. ``{"n_queries": 1000}``)."""
    import os

    from rslad_tf.common import fileio
    from rslad_tf.common.errors import UserError

    from components.common import ensure_empty_dir

    names = parse_formats(formats)
    ensure_empty_dir(out_dir, "exports artifact")
    if not names:
        # Nothing else is imported: this step then never loads TensorFlow.
        log("no export formats asked for (pipeline parameter export_formats): nothing to do")
        fileio.write_json(os.path.join(out_dir, EXPORTS_FILE), [])
        fileio.write_json(results_file, [])
        return []
    from components.common import check_model_fits, parse_list, read_dataset, tagged
    from components.evaluation import parse_reference_options, run_identity
    from components.training import load_model_artifact
    from rslad_tf.evaluation.artifact_eval import evaluate_artifact

    chosen = parse_list(attacks, vocabulary.COLUMN_KEYS, "attack")
    options = parse_reference_options(square_options, "square_options")
    from rslad_tf.interop.export import export

    manifest = read_dataset(dataset_dir)
    model, keras_path, info = load_model_artifact(model_dir, "model")
    check_model_fits(model, manifest, keras_path)
    surrogate_path = None
    if any(a.startswith("transfer_") for a in chosen):
        if not surrogate_dir:
            raise UserError("the transfer attacks of an exported student need the surrogate "
                            "Model artifact")
        _, surrogate_path, _ = load_model_artifact(surrogate_dir, "surrogate")
    log = tagged(log, info.get("method") or "model")
    records, results = [], []
    for fmt in names:
        record = export(model, fmt, os.path.join(out_dir, FILE_NAMES[fmt]),
                        dataset=manifest["dataset"], data_dir=manifest.get("data_dir"),
                        seed=int(seed), log=log)
        log(f"{fmt}: {record['size_bytes'] / 1024:.1f} KiB, largest logit difference "
            f"{record['max_logit_diff']:.3g}")
        result = evaluate_artifact(
            record["path"], source=keras_path, surrogate=surrogate_path,
            dataset=manifest["dataset"], data_dir=manifest.get("data_dir"), attacks=chosen,
            n_examples=int(n_examples) or None, batch_size=int(batch_size),
            eps=float(epsilon) or None, seed=int(seed), autoattack_options=options or None,
            method=info.get("method"), model_name=info.get("model_name"),
            checkpoint=info.get("checkpoint"), log=log)
        result.update(model_sha256=info.get("sha256"), export=record, **run_identity(info))
        records.append(record)
        results.append(result)
    fileio.write_json(os.path.join(out_dir, EXPORTS_FILE), records)
    fileio.write_json(results_file, results)
    return results


@component
def export_student(data: Input[Dataset], model: Input[Model], surrogate: Input[Model],
                   exports: Output[Model], results: Output[Artifact], formats: str = "",
                   # A literal: kfp runs the wrapper's source alone, without module globals.
                   attacks: str = "clean,fgsm,pgd_sat,pgd_trades,cw_inf,transfer_pgd,"
                                  "transfer_cw,square",
                   n_examples: int = 0, epsilon: float = 0.0,
                   batch_size: int = 256, seed: int = 0, square_options: str = ""):
    """Export one student (``formats``: comma-separated saved_model, litert, litert-int8,
    onnx; empty: none) and evaluate each artifact: exports + a list of eval JSONs."""
    from components.common import configure_runtime
    from components.export_student import export_student_fn

    configure_runtime(tensorflow=bool(formats.strip()))
    evals = export_student_fn(data.path, model.path, surrogate.path, exports.path,
                              results.path, formats=formats, attacks=attacks,
                              n_examples=n_examples, epsilon=epsilon, batch_size=batch_size,
                              seed=seed, square_options=square_options)
    results.metadata["formats"] = formats
    results.metadata["artifacts"] = len(evals)
