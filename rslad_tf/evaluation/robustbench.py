"""Results in RobustBench's per-model format: `python -m rslad_tf.report --format robustbench`.

RobustBench keeps one JSON object per leaderboard entry (``model_info/<dataset>/<threat
model>/<name>.json`` in its repository) with, among others, the fields ``name``,
``dataset``, ``eps`` (text, e.g. ``"8/255"``), ``clean_acc`` and ``autoattack_acc`` (text,
percent with two decimals), ``architecture``, ``number_forward_passes``,
``additional_data`` and ``footnote`` (``reported``, the number of the paper that
proposed a model, is left out: these are our measurements). `entries` writes those fields for our
rows (not the paper's), plus ``threat_model`` (RobustBench's directory level) and
``n_examples``, so a result can be set beside a leaderboard entry. What RobustBench's
fields cannot say (fewer than the full 10,000 test points, the AutoAttack implementation,
a mean over several runs) goes into ``footnote``.
"""

from __future__ import annotations

import json

from rslad_tf.common import vocabulary

# Architecture names as the leaderboard writes them; other models keep their own name.
ARCHITECTURES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50",
                 "mobilenetv2": "MobileNetV2", "wrn34_10": "WideResNet-34-10",
                 "wrn70_16": "WideResNet-70-16", "small_cnn": "small CNN"}
THREAT_MODEL = "Linf"  # every attack of the toolkit is L-infinity
# Our models are single feed-forward classifiers: one forward pass per prediction.
FORWARD_PASSES = 1
# RobustBench evaluates on the first 10,000 test points (the whole CIFAR test set).
FULL_TEST_POINTS = 10000
# The report's labels of the two columns a leaderboard entry holds.
CLEAN_LABEL = vocabulary.COLUMNS_BY_KEY["clean"].label
AA_LABEL = vocabulary.COLUMNS_BY_KEY["autoattack"].label


def architecture(model: str) -> str:
    """``"wrn34_10"`` -> ``"WideResNet-34-10"``; ``"small_cnn(width=16)"`` -> ``"small CNN
    (width=16)"``."""
    base, paren, rest = str(model).partition("(")
    name = ARCHITECTURES.get(base, base)
    return f"{name} ({rest}" if paren else name


def _percent(stats) -> str | None:
    return None if stats is None else f"{stats['mean']:.2f}"


def entry(row: dict, format_eps=str) -> dict:
    """One row of `rslad_tf.evaluation.report.build_table` as a RobustBench model-info object;
    ``format_eps`` writes the radius (`rslad_tf.evaluation.report.format_eps`: ``"8/255"``)."""
    columns = row.get("columns") or {}
    n_examples = row.get("n_examples") or []
    notes = []
    if n_examples and max(n_examples) < FULL_TEST_POINTS:
        notes.append(f"evaluated on the first {', '.join(map(str, n_examples))} test points "
                     f"(RobustBench uses {FULL_TEST_POINTS:,})")
    if row.get("n_runs") and row["n_runs"] > 1:
        aa = columns.get(AA_LABEL)
        spread = f", AutoAttack std {aa['std']:.2f}" if aa else ""
        notes.append(f"mean of {row['n_runs']} training runs{spread}")
    if columns.get(AA_LABEL) is None:
        notes.append("AutoAttack was not run")
    elif row.get("autoattack_standard") is False:
        notes.append("AutoAttack NOT in its standard version (reduced settings): not "
                     "comparable with the leaderboard")
    if row.get("autoattack_impl"):
        notes.append(f"AutoAttack implementation: {row['autoattack_impl']}")
    notes.append(f"{row.get('method')} training, {row.get('checkpoint') or 'best'} checkpoint")
    return {
        "name": f"rslad_tf {row.get('method')} {row.get('model')} ({row.get('checkpoint')})",
        "dataset": row.get("dataset"),
        "threat_model": THREAT_MODEL,
        "eps": format_eps(row.get("eps")),
        "clean_acc": _percent(columns.get(CLEAN_LABEL)),
        "autoattack_acc": _percent(columns.get(AA_LABEL)),
        "architecture": architecture(row.get("model")),
        "number_forward_passes": FORWARD_PASSES,
        "additional_data": False,
        "n_examples": max(n_examples) if n_examples else None,
        "footnote": "; ".join(notes) + ".",
    }


def entries(rows, format_eps=str) -> list[dict]:
    """The RobustBench objects of our rows (the paper's rows are left out)."""
    return [entry(row, format_eps) for row in rows if row.get("source", "ours") == "ours"]


def render(rows, format_eps=str) -> str:
    """The entries as JSON text: one object for one row, a list for several."""
    found = entries(rows, format_eps)
    return json.dumps(found[0] if len(found) == 1 else found, indent=2) + "\n"
