"""The toolkit's shared names, defined once: training methods here, evaluation columns
below. Everything that lists, validates or orders them reads these tuples."""

from __future__ import annotations

# Every registered training method, in the order tables list them: the RSLAD paper's six
# (its Tables 1-3), then the later distillation methods.
METHOD_NAMES = ("natural", "sat", "trades", "ard", "iad", "rslad", "adaad", "adaiad")
# What the pipeline (and so the demo) trains when no method list is given: the six
# methods of the RSLAD paper's tables. The later methods are one --methods away; each
# added student costs the digits demo about a minute and a half of CPU.
PAPER_METHODS = METHOD_NAMES[:6]
# The methods that learn from a teacher (and so need one).
DISTILLATION_METHODS = ("ard", "iad", "rslad", "adaad", "adaiad")
