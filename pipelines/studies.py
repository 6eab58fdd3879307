"""Named studies: sweeps of the pipeline written down as data (docs/pipeline.md, "Sweeps
and studies").

Each study is a dict: ``description``; ``base``, the local preset of
``pipelines.rslad_pipeline.LOCAL_PRESETS`` its parameters start from (None: the
pipeline's defaults); ``params``, pipeline parameters on top of it (``methods``,
``seeds``, ``grid`` and the budgets). ``--study NAME`` of ``run-local``, ``compile`` and
``submit`` fills the parameters from it (`pipelines.rslad_pipeline.study_params`);
options given on the command line still win.
"""

from __future__ import annotations

import json

from rslad_tf.common.errors import UserError

STUDIES = {
    # The sweep machinery end to end in under three minutes on 2 CPU cores: one method,
    # two seeds, two student widths, the digits-tiny budget. The numbers mean nothing.
    "digits-tiny-sweep": {
        "description": "smoke test of a sweep: sat x seeds 0, 1 x student width 6, 8 "
                       "(digits-tiny budget)",
        "base": "digits-tiny",
        "params": {"methods": ["sat"], "seeds": [0, 1],
                   "grid": json.dumps([{"model_kwargs.width": 6},
                                       {"model_kwargs.width": 8}])},
    },
    # The embedded study's cells (docs/study.md) as one pipeline sweep for a cluster: SAT
    # against RSLAD, student widths 4, 8, 16 x eps 0.2, 0.3 x seeds 0, 1, 2, the digits
    # presets' budget (100 epochs, each method's rate from the grid at eps 0.2), AutoAttack
    # on all test points. Unlike the study's driver (pipelines/embedded_study.py) it
    # trains one teacher, at the pipeline's eps, and one rate per method at both radii.
    "digits-embedded": {
        "description": "sat vs rslad on digits: student width 4, 8, 16 x eps 0.2, 0.3 x "
                       "seeds 0, 1, 2; the presets' 100 epochs; AutoAttack on all test "
                       "points",
        "base": None,
        "params": {"dataset": "digits", "methods": ["sat", "rslad"], "seeds": [0, 1, 2],
                   "grid": json.dumps([{"model_kwargs.width": width, "epsilon": eps}
                                       for eps in (0.2, 0.3) for width in (4, 8, 16)]),
                   "teacher_method": "sat", "surrogate_epochs": 30,
                   "select_n_examples": 200, "eval_n_examples": 0,
                   "autoattack_impl": "native"},
    },
}


def get(name: str) -> dict:
    """The study ``name``; one-line `UserError` naming the studies otherwise."""
    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)} "
                        "(pipelines/studies.py)")
    return STUDIES[name]
