"""The toolkit's shared names, defined once: training methods here, evaluation columns
below. Everything that lists, validates or orders them reads these tuples."""

from __future__ import annotations

import dataclasses

# Every registered training method, in the order tables list them: the RSLAD paper's six
# (its Tables 1-3), then the later distillation methods.
METHOD_NAMES = ("natural", "sat", "trades", "ard", "iad", "rslad", "adaad", "adaiad")
# What the pipeline (and so the demo) trains when no method list is given: the six
# methods of the RSLAD paper's tables. The later methods are one --methods away; each
# added student costs the digits demo about three and a half minutes of one core on the
# project's 2-core VM (its loop took 10 min 44 s to 11 min 12 s for six, two at a time:
# docs/pipeline.md).
PAPER_METHODS = METHOD_NAMES[:6]
# The methods that learn from a teacher (and so need one).
DISTILLATION_METHODS = ("ard", "iad", "rslad", "adaad", "adaiad")
# The methods whose soft labels are the teacher's output on the clean training images, so
# that it can be cached (`--teacher-cache`). IAD also asks the teacher about its adversarial
# images (not cached); AdaAD and AdaIAD attack the teacher's output, so nothing of theirs is.
TEACHER_CACHE_METHODS = ("ard", "iad", "rslad")


# --------------------------------------------------------------------------------------
# Evaluation columns
# --------------------------------------------------------------------------------------
# The kinds of column: the unattacked images, a white-box attack (crafted with the
# model's gradients), a transfer attack (a white-box attack crafted on a surrogate model)
# and a query attack (only the model's outputs). Transfer and query are the black box.
CLEAN, WHITE_BOX, TRANSFER, QUERY = "clean", "white-box", "transfer", "query"


@dataclasses.dataclass(frozen=True)
class EvalColumn:
    """One column of the paper's evaluation table."""

    key: str  # the attack's name: ``--attacks``, the eval JSON's ``attacks`` and ``seconds``
    label: str  # the table's (and the paper's) header
    kind: str  # CLEAN, WHITE_BOX, TRANSFER or QUERY
    transfers: str | None = None  # TRANSFER columns: the white-box column crafted on a surrogate

    @property
    def json_key(self) -> str:
        """The eval JSON's key of this column's accuracy (percent)."""
        return f"{self.key}_acc"

    @property
    def black_box(self) -> bool:
        return self.kind in (TRANSFER, QUERY)


# In table order: the paper's Table 1 columns, then its black-box columns (Table 4).
EVAL_COLUMNS = (
    EvalColumn("clean", "Clean", CLEAN),
    EvalColumn("fgsm", "FGSM", WHITE_BOX),
    EvalColumn("pgd_sat", "PGD_SAT", WHITE_BOX),
    EvalColumn("pgd_trades", "PGD_TRADES", WHITE_BOX),
    EvalColumn("cw_inf", "CW_inf", WHITE_BOX),
    EvalColumn("autoattack", "AA", WHITE_BOX),
    EvalColumn("transfer_pgd", "PGD-20 transfer", TRANSFER, transfers="pgd_sat"),
    EvalColumn("transfer_cw", "CW_inf transfer", TRANSFER, transfers="cw_inf"),
    EvalColumn("square", "Square", QUERY),
)
COLUMNS_BY_KEY = {c.key: c for c in EVAL_COLUMNS}
# Every column's key, in table order (what ``--attacks`` accepts).
COLUMN_KEYS = tuple(COLUMNS_BY_KEY)
# The white-box suite: clean and the white-box attacks (the default evaluation, the
# pipeline's white-box step, the report's always-shown columns).
WHITE_BOX_SUITE = tuple(c.key for c in EVAL_COLUMNS if not c.black_box)
# The white-box attacks alone, and the black-box columns (the pipeline's black-box step).
WHITE_BOX_ATTACKS = tuple(c.key for c in EVAL_COLUMNS if c.kind == WHITE_BOX)
BLACK_BOX_COLUMNS = tuple(c.key for c in EVAL_COLUMNS if c.black_box)
TRANSFER_COLUMNS = tuple(c.key for c in EVAL_COLUMNS if c.kind == TRANSFER)
# The columns AutoAttack's code runs (Square alone for "square"): they have an
# implementation (native or reference) and a standard setting.
AUTOATTACK_COLUMNS = ("autoattack", "square")
