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
    # Issue 12, item 3 (declared, not yet run): when do robust soft labels help a small
    # student? Student widths where capacity is and is not the bottleneck, the digits
    # threat model (eps 0.2) and a harder one (0.3), SAT against RSLAD, three seeds,
    # AutoAttack on every test point, a budget long enough for the distillation methods
    # to converge (150 epochs). The teacher is trained once at the pipeline's eps (0.2);
    # teachers of two strengths come with the study's second stage.
    "digits-embedded": {
        "description": "sat vs rslad on digits: student width 4, 8, 16 x eps 0.2, 0.3 x "
                       "seeds 0, 1, 2; 150 epochs; AutoAttack on all test points",
        "base": None,
        "params": {"dataset": "digits", "methods": ["sat", "rslad"], "seeds": [0, 1, 2],
                   "grid": json.dumps([{"model_kwargs.width": width, "epsilon": eps}
                                       for eps in (0.2, 0.3) for width in (4, 8, 16)]),
                   "teacher_method": "sat", "teacher_epochs": 150, "surrogate_epochs": 30,
                   "epochs": 150, "select_n_examples": 200, "eval_n_examples": 0,
                   "autoattack_impl": "native"},
    },
}


def get(name: str) -> dict:
    """The study ``name``; one-line `UserError` naming the studies otherwise."""
    if name not in STUDIES:
        raise UserError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)} "
                        "(pipelines/studies.py)")
    return STUDIES[name]
