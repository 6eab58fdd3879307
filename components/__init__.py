"""Kubeflow Pipelines (kfp v2) components: thin wrappers over `rslad_tf`, one per stage.

Every component is a lightweight Python component that runs in one image
(``$RSLAD_TF_IMAGE``, default ``rslad-tf:0.1.0``, built from the repository's
``Dockerfile``) with no run-time ``pip install``. Each module holds the plain function
that does the work (``prepare_data_fn``, ``train_teacher_fn``, ...), unit-tested directly,
and the kfp component (``prepare_data``, ``train_teacher``, ...) that calls it.

`build(image)` returns the components for another image (what ``compile --image`` uses).
"""

from __future__ import annotations

import types

from components.common import DEFAULT_IMAGE, IMAGE_ENV, component, image
from components.distill_student import distill_student
from components.evaluate_blackbox import evaluate_blackbox
from components.evaluate_whitebox import evaluate_whitebox
from components.export_student import export_student
from components.import_teacher import import_teacher
from components.make_report import make_report
from components.plan_sweep import plan_sweep
from components.prepare_data import prepare_data
from components.train_teacher import train_surrogate, train_teacher

ALL = {
    "prepare_data": prepare_data,
    "train_teacher": train_teacher,
    "train_surrogate": train_surrogate,
    "import_teacher": import_teacher,
    "distill_student": distill_student,
    "evaluate_whitebox": evaluate_whitebox,
    "evaluate_blackbox": evaluate_blackbox,
    "export_student": export_student,
    "make_report": make_report,
    "plan_sweep": plan_sweep,
}


def build(image_name: str | None = None) -> types.SimpleNamespace:
    """All components, built for ``image_name`` (default: `image()`)."""
    image_name = image_name or image()
    return types.SimpleNamespace(**{
        name: component(comp.python_func, base_image=image_name) for name, comp in ALL.items()
    })


__all__ = ["ALL", "DEFAULT_IMAGE", "IMAGE_ENV", "build", "image", *ALL]
