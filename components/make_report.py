"""make_report: the paper-style table of the teacher and every method (white- and
black-box columns, each model's trainable parameters) as Markdown, the table as JSON, and
a plot of clean accuracy against AutoAttack accuracy."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
import base64
import json
import os
import tempfile
from typing import List

from kfp.dsl import Artifact, Input, Markdown, Output

from components.common import component
from rslad_tf.common import vocabulary
from rslad_tf.common.errors import UserError

IMPL_TEXT = {"native": "the toolkit's TensorFlow implementation (rslad_tf.attacks.autoattack)",
             "reference": "the reference code (pyautoattack) under Keras' torch backend"}
# What identifies one evaluated model: its white-box and black-box results merge on it.
# An exported artifact's eval (export_student) is a row of its own, after its float model;
# in a sweep the training seed and the grid cell tell the runs of one method apart.
ROW_KEY = ("dataset", "method", "model", "checkpoint", "artifact_format", "train_seed",
           "grid_cell")


def _load_eval(path: str) -> dict:
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path!r} is not an eval JSON of evaluate_whitebox/evaluate_blackbox "
                        f"({exc})") from None
    if not isinstance(result, dict) or not any(k.endswith("_acc") for k in result):
        raise UserError(f"{path!r} is not an eval JSON of evaluate_whitebox/evaluate_blackbox "
                        "(no accuracies in it)")
    return result


def merge_evals(whitebox: list[dict], blackbox: list[dict]) -> list[dict]:
    """One eval dict per model: the black-box accuracies (and attack settings) added to the
    white-box result of the same model, in the paper's method order."""
    from rslad_tf.common.vocabulary import METHOD_NAMES

    merged: dict[tuple, dict] = {}
    for result in list(whitebox) + list(blackbox):
        key = tuple(result.get(k) for k in ROW_KEY)
        if key not in merged:
            merged[key] = dict(result)
            continue
        row = merged[key]
        for name, value in result.items():
            if name.endswith("_acc"):
                row[name] = value
        if isinstance(result.get("attacks"), dict):
            row["attacks"] = {**(row.get("attacks") or {}), **result["attacks"]}
        for name in ("surrogate", "surrogate_model", "surrogate_sha256"):
            if name in result:
                row[name] = result[name]
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    return sorted(merged.values(),
                  key=lambda r: (order.get(r.get("method"), len(order)), str(r.get("model"))))


def _options_text(settings: dict) -> str:
    options = settings.get("options") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "non-standard"


def _placeholder_plot(path: str, message: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


TEACHER = "teacher"


def teacher_row(teacher_file: str) -> dict:
    """The teacher's white-box eval JSON as a row of the students' table: its method
    becomes ``teacher (<method>)`` so that it is never mixed with a student's row."""
    result = _load_eval(teacher_file)
    return dict(result, method=f"{TEACHER} ({result.get('method') or '?'})", role=TEACHER)


def recorded_note(result: dict) -> str:
    """The report's line for an eval whose columns were taken from a record
    (`rslad_tf.evaluation.recorded`): which, from where, and what was checked."""
    parts = []
    for key, rec in sorted(result["recorded"].items()):
        label = vocabulary.COLUMNS_BY_KEY[key].label if key in vocabulary.COLUMNS_BY_KEY else key
        source = str(rec.get("source") or "?")
        if "://" not in source:
            source = os.path.basename(source)
        digest = str(rec.get("record_sha256") or "")
        seconds = rec.get("seconds")
        parts.append(
            f"{label} from the record {source}"
            + (f" (SHA-256 {digest[:12]}...)" if digest else "")
            + (f", which took {seconds / 60:.0f} min to measure" if seconds else "")
            + "; made on this very model file, with these settings; the other "
            f"{len(rec.get('checked') or {})} columns, measured in this run, agree with it "
            f"within {rec.get('tolerance_points')} test point each")
    return f"- {result.get('method')} ({result.get('model')}): " + "; ".join(parts)


def _run_label(result: dict) -> str:
    label = f"{result.get('method')} ({result.get('model')}"
    if result.get("grid_cell"):
        label += f", {result['grid_cell']}"
    if result.get("train_seed") is not None:
        label += f", seed {result['train_seed']}"
    return label + ")"


def masking_checks(evals: list[dict]) -> list[str]:
    """The report's lines on gradient masking (`rslad_tf.evaluation.sanity`): each model's
    white-box measurements (zero input gradients, PGD accuracy by steps) checked again
    against all the columns of its merged row, which is where the black-box columns first
    meet the white-box ones (a black-box attack stronger than every white-box one is a
    symptom too). Updates each eval's ``sanity.warnings`` in place. One line when no check
    fires, else one per warning; nothing when no eval carries the measurements."""
    from rslad_tf.evaluation import sanity

    checked, lines = 0, []
    for result in evals:
        checks = result.get("sanity")
        if not isinstance(checks, dict) or checks.get("skipped"):
            continue
        steps = {int(k): float(v)
                 for k, v in (checks.get("pgd_accuracy_by_steps") or {}).items()}
        warnings = sanity.masking_warnings(result, checks.get("zero_gradient_fraction"),
                                           steps or None)
        result["sanity"] = dict(checks, warnings=warnings)
        checked += 1
        lines += [f"- **warning**, {_run_label(result)}: {w}" for w in warnings]
    if not checked:
        return []
    if not lines:
        return [f"- gradient masking: no symptom in any of the {checked} evaluated models "
                "(all-zero input gradients, PGD accuracy rising from 5 to 20 steps, a "
                "black-box attack stronger than the white-box ones)"]
    return lines


def _load_artifact_evals(path: str) -> list[dict]:
    """The list of artifact eval JSONs an export_student step wrote (empty when it
    exported nothing)."""
    try:
        with open(path) as f:
            evals = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path!r} is not an export_student results file ({exc})") from None
    if not isinstance(evals, list) or not all(
            isinstance(e, dict) and e.get("artifact_format") for e in evals):
        raise UserError(f"{path!r} is not an export_student results file (a list of "
                        "artifact eval JSONs)")
    return evals


def make_report_fn(whitebox_files: list[str], blackbox_files: list[str], report_file: str,
                   table_file: str, plot_file: str, *, teacher_file: str = "",
                   artifact_files: list[str] = (),
                   title: str = "RSLAD: robustness of the distilled students",
                   log=print) -> list:
    """Write the report (Markdown), the table (JSON) and the plot (PNG); returns the rows.

    ``teacher_file``: the teacher's white-box eval JSON; its row comes first, with the
    students' rows below it (each row with the trainable parameters of its model)."""
    from rslad_tf.common import fileio
    from rslad_tf.evaluation import report

    if not whitebox_files and not blackbox_files:
        raise UserError("no evaluation results to report")
    evals = merge_evals([_load_eval(p) for p in whitebox_files],
                        [_load_eval(p) for p in blackbox_files])
    evals += [ev for p in artifact_files for ev in _load_artifact_evals(p)]
    rows = report.build_table(evals)
    teacher_eval = teacher_row(teacher_file) if teacher_file else None
    if teacher_eval is not None:
        teacher = report.build_table([teacher_eval])
        for row in teacher:
            row["role"] = TEACHER
        rows = teacher + rows
    table_md = report.render(rows, fmt="md")
    fileio.write_text(table_file, report.render(rows, fmt="json"))
    # The plot goes through a .png name: the artifact path has no suffix to infer a format.
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "clean_vs_aa.png")
        try:
            report.plot_clean_vs_aa(rows, png)
        except UserError as exc:  # e.g. AutoAttack not among the attacks run
            _placeholder_plot(png, str(exc))
        with open(png, "rb") as f:
            png_bytes = f.read()
    with open(plot_file, "wb") as f:
        f.write(png_bytes)
    first = evals[0]
    settings = [f"- dataset: {first.get('dataset')}, eps {first.get('eps')}, "
                f"{first.get('n_examples')} test images per evaluation"]
    surrogate = next((e.get("surrogate_model") or e.get("surrogate") for e in evals
                      if e.get("surrogate_model") or e.get("surrogate")), None)
    if surrogate:
        settings.append(f"- black-box: transfer attacks crafted on the surrogate {surrogate} "
                        "(trained separately), Square queries the model itself")
    changed = sorted({f"{name} ({_options_text(e['attacks'][name])})" for e in evals
                      for name in vocabulary.AUTOATTACK_COLUMNS
                      if isinstance(e.get("attacks"), dict)
                      and isinstance(e["attacks"].get(name), dict)
                      and e["attacks"][name].get("standard") is False})
    if changed:
        settings.append("- **not the paper's settings** (smoke test or time budget): "
                        + "; ".join(changed) + ". The paper: AutoAttack standard, Square "
                        "5,000 queries")
    impls = sorted({str(e["autoattack_impl"]) for e in evals if e.get("autoattack_impl")})
    if impls:
        settings.append("- AutoAttack and Square: " + ", ".join(IMPL_TEXT.get(i, i)
                                                                for i in impls))
    seeds = sorted({e["train_seed"] for e in evals if e.get("train_seed") is not None})
    grid = sorted({e["grid_cell"] for e in evals if e.get("grid_cell")})
    if len(seeds) > 1 or grid:
        settings.append(f"- sweep: training seeds {', '.join(map(str, seeds))}; grid cells "
                        f"{', '.join(grid) or '(preset)'}. Each row is one method and cell: "
                        "mean ± sample standard deviation over its seeds (Runs); every run "
                        "is listed under the table")
    settings += [recorded_note(e) for e in ([teacher_eval] if teacher_eval else []) + evals
                 if e.get("recorded")]
    settings += masking_checks(([teacher_eval] if teacher_eval else []) + evals)
    settings.append("- accuracies in percent; AA = AutoAttack (APGD-CE, APGD-T, FAB-T, "
                    "Square)")
    if any(e.get("artifact_format") for e in evals):
        settings.append("- exported artifacts (Format other than keras): the white-box columns "
                        "are the float student's adversarial images classified by the "
                        "artifact, Square queries the artifact itself; Size on disk, CPU "
                        "latency per image at batch 1 (median)")
    runs = []
    if any(row.get("grid_cell") or (row.get("n_runs") or 0) > 1 for row in rows):
        # A sweep: the table above holds mean ± sample std per cell; here is every run.
        runs = ["## Every run", "", "One line per trained student and checkpoint: the "
                "numbers the means and standard deviations above are made of.", "",
                report.render_runs(rows).rstrip(), ""]
    text = "\n".join([f"# {title}", "", *settings, "", table_md.rstrip(), "", *runs,
                      "![clean vs AutoAttack accuracy](data:image/png;base64,"
                      + base64.b64encode(png_bytes).decode("ascii") + ")", ""])
    fileio.write_text(report_file, text)
    log(table_md)
    return rows


@component
def make_report(whitebox: Input[List[Artifact]], blackbox: Input[List[Artifact]],
                teacher: Input[Artifact], artifacts: Input[List[Artifact]],
                report: Output[Markdown], table: Output[Artifact], plot: Output[Artifact]):
    """The paper's table for the teacher and all methods: Markdown report, table JSON,
    plot PNG."""
    from components.common import configure_runtime
    from components.make_report import make_report_fn

    configure_runtime(tensorflow=False)
    rows = make_report_fn([a.path for a in whitebox], [a.path for a in blackbox],
                          report.path, table.path, plot.path, teacher_file=teacher.path,
                          artifact_files=[a.path for a in artifacts])
    table.metadata["rows"] = len(rows)
    plot.metadata["format"] = "png"
