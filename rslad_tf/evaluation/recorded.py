"""An AutoAttack result measured once and reused for the same model file and settings.

AutoAttack is by far the costliest column of the suite: on the project's 2-core VM the
standard version took 13 minutes for the digits demo's width-64 teacher on 450 points,
against 20 seconds for the other five white-box columns together (docs/pipeline.md). A
model that never changes, such as a teacher the repository ships pinned by SHA-256, need
not pay it on every run: its eval JSON, recorded once, can supply the AutoAttack column.

A recorded AutoAttack result is taken only when all of these hold, else AutoAttack runs:

- the record was made on this very file: its ``model_sha256`` is the model's SHA-256;
- with the same protocol: dataset, eps, number of test points, seed, batch size,
  implementation (`SETTINGS`), AutoAttack's standard version with the same options;
- the columns measured in this run agree with the record's, each within `TOLERANCE_POINTS`
  test points: the code, the data and the model still behave as when it was recorded.

The tolerance leaves room for another CPU's float rounding to flip a borderline point; on
one machine the columns come out identical. The column check alone cannot tell two
checkpoints of one run apart (the shipped teacher's best and last checkpoints differ by 1
and 2 points of 450 in two of the five columns): the SHA-256 is what names the model.
"""

from __future__ import annotations

import json
import math

from rslad_tf.common import vocabulary
from rslad_tf.common.errors import UserError

AUTOATTACK = "autoattack"
# The live columns may differ from the record's by this many test points each.
TOLERANCE_POINTS = 1
# What must be equal for AutoAttack's result to carry over (top-level eval JSON keys).
SETTINGS = ("dataset", "n_examples", "seed", "batch_size", "autoattack_impl")


def load(path: str, what: str = "recorded evaluation") -> dict:
    """The eval JSON at ``path``; a one-line UserError when it is not one with an
    AutoAttack result."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{what} {path!r} is not a readable eval JSON ({exc})") from None
    acc_key = vocabulary.COLUMNS_BY_KEY[AUTOATTACK].json_key
    if not isinstance(record, dict) or not isinstance(record.get(acc_key), (int, float)):
        raise UserError(f"{what} {path!r} holds no AutoAttack accuracy ({acc_key}): record "
                        "it with `python -m rslad_tf.evaluate MODEL --out FILE`")
    return record


def _autoattack_options(result: dict) -> dict:
    """The AutoAttack overrides an eval JSON ran with ({} = the standard version)."""
    settings = (result.get("attacks") or {}).get(AUTOATTACK) or {}
    return dict(settings.get("options") or {})


def mismatch(record: dict, live: dict, *, model_sha256: str | None, eps: float,
             options: dict | None = None) -> str | None:
    """Why ``record``'s AutoAttack result does not apply to this run, or None when it does.

    ``live``: this run's eval JSON without AutoAttack (the same settings, the other
    columns measured); ``model_sha256``: the evaluated file's; ``eps``: this run's radius;
    ``options``: this run's AutoAttack overrides ({} = the standard version)."""
    if not model_sha256 or record.get("model_sha256") != model_sha256:
        return (f"it was made on another file (model SHA-256 "
                f"{str(record.get('model_sha256') or 'not recorded')[:12]}..., this model "
                f"{str(model_sha256 or 'unknown')[:12]}...)")
    recorded_eps = record.get("eps")
    if not isinstance(recorded_eps, (int, float)) or not math.isclose(recorded_eps, eps,
                                                                     rel_tol=1e-6):
        return f"it was made at eps {recorded_eps}, this run attacks at eps {eps:.5g}"
    for key in SETTINGS:
        if record.get(key) != live.get(key):
            return f"its {key} is {record.get(key)!r}, this run's is {live.get(key)!r}"
    version = ((record.get("attacks") or {}).get(AUTOATTACK) or {}).get("version")
    if version != "standard":
        return f"it ran AutoAttack's {version!r} version, this run the standard one"
    if _autoattack_options(record) != dict(options or {}):
        return (f"it ran AutoAttack with options {_autoattack_options(record) or 'standard'}, "
                f"this run asks for {dict(options or {}) or 'standard'}")
    n = live.get("n_examples") or 0
    tolerance = 100.0 * TOLERANCE_POINTS / n if n else 0.0
    compared = 0
    for column in vocabulary.EVAL_COLUMNS:
        if column.key == AUTOATTACK or column.json_key not in live:
            continue
        now, then = live[column.json_key], record.get(column.json_key)
        if not isinstance(then, (int, float)):
            return f"it holds no {column.label} column to check against this run's"
        if abs(now - then) > tolerance + 1e-9:
            return (f"{column.label} is {now:.2f}% now and {then:.2f}% in the record, "
                    f"more than {TOLERANCE_POINTS} of {n} points apart")
        compared += 1
    if not compared:
        return "this run measured no other column to check the record against"
    return None


def merge(live: dict, record: dict, *, source: str, record_sha256: str | None) -> dict:
    """``live`` with the AutoAttack column, its per-attack accuracies and settings taken
    from ``record``, and a ``recorded`` entry saying where from and what was checked (the
    seconds are the record's, under ``recorded``: this run did not spend them)."""
    acc_key = vocabulary.COLUMNS_BY_KEY[AUTOATTACK].json_key
    out = dict(live)
    out[acc_key] = record[acc_key]
    if record.get("autoattack_per_attack") is not None:
        out["autoattack_per_attack"] = record["autoattack_per_attack"]
    attacks = dict(out.get("attacks") or {})
    if (record.get("attacks") or {}).get(AUTOATTACK) is not None:
        attacks[AUTOATTACK] = record["attacks"][AUTOATTACK]
    out["attacks"] = attacks
    checked = {c.key: {"now": live[c.json_key], "recorded": record[c.json_key]}
               for c in vocabulary.EVAL_COLUMNS
               if c.key != AUTOATTACK and c.json_key in live}
    out["recorded"] = dict(live.get("recorded") or {}, **{AUTOATTACK: {
        "source": source, "record_sha256": record_sha256,
        "seconds": (record.get("seconds") or {}).get(AUTOATTACK),
        "checked": checked, "tolerance_points": TOLERANCE_POINTS}})
    return out
