"""The RSLAD pipeline: data, teacher, surrogate, every method in parallel, white- and
black-box evaluation, the paper's table.

    python -m pipelines.rslad_pipeline compile --out rslad.yaml [--image NAME] [--sweep]
        [--study NAME]
    python -m pipelines.rslad_pipeline run-local [--preset digits] [--out DIR] [--epochs N]
        [--seeds 0,1,2] [--grid JSON] [--study NAME]
    python -m pipelines.rslad_pipeline submit --host URL [--namespace NS] [--token-file F]
        [--param name=value ...] [--study NAME] [--wait] [--dry-run]   (docs/cluster.md)
    python -m pipelines.rslad_pipeline follow --host URL --run-id ID
    python -m pipelines.rslad_pipeline params

Graph::

    prepare_data ─┬─ train_teacher ── import_teacher ──────────────┐
                  ├─ train_surrogate (SAT, another model and seed) ─┼─────────────┐
                  └─ ParallelFor(methods): distill_student ─┬─ evaluate_whitebox ┐│
                                                            └─ evaluate_blackbox ┴┴─ make_report
                                                                    (dsl.Collected)

The teacher from ``import_teacher`` is evaluated white-box too (``evaluate-teacher``): its
row heads the report's table.

A sweep (docs/pipeline.md, "Sweeps and studies"; the run parameters ``seeds`` and
``grid``, named studies in pipelines/studies.py) is the same graph with a ``plan_sweep``
step in front of the loop, which then runs over the cells methods x seeds x grid instead
of the methods; the report gives each (method, cell) mean ± sample std over its seeds and
lists every run. Without seeds and grid the graph is the one above.

Design notes (kfp 2.17.3):

- The teacher is always ``train_teacher -> import_teacher``: with ``teacher_uri`` set, the
  first step only records that it was skipped and the second fetches and checks the file.
  ``dsl.If``/``dsl.Else`` with ``dsl.OneOf`` would say the same, but kfp's local runner
  cannot resolve ``OneOf`` over artifacts ("Expected 1 artifact in ArtifactSelectorSpec");
  one graph serves cluster and local runs alike.
- Accelerators come from the pipeline parameters ``accelerator_type`` / ``accelerator_count``
  (``set_accelerator_type`` / ``set_accelerator_limit`` take pipeline parameters). Inside
  ``dsl.ParallelFor`` the compiler does not pass a parameter that only a resource setting
  uses into the loop's sub-DAG (the step then fails: "Parent pipeline input argument
  'pipelinechannel--accelerator_count' not found"); every accelerated step therefore also
  takes the values as ordinary inputs (``device_type`` / ``device_count``, which it logs
  and checks against the GPUs it sees). Compile with ``--no-accelerators`` for a CPU-only
  cluster. The local runner ignores resources.
- Training steps never use the cache (a rerun must retrain); evaluation and reporting may.
"""

# No `from __future__ import annotations`: kfp reads the pipeline's annotations as types.
import argparse
import builtins
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import sys
import warnings
from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Markdown

import components
from components.common import BLACKBOX_ATTACKS, WHITEBOX_ATTACKS
from pipelines import parameters, submit
from rslad_tf.common import fileio
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli
from rslad_tf.common.vocabulary import METHOD_NAMES, PAPER_METHODS
from rslad_tf.config import presets

PIPELINE_NAME = "rslad-tf"
# The checkout this module lives in (its steps import it; the demo's teacher ships in it).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

ReportOutputs = NamedTuple("ReportOutputs", [("report", Markdown), ("table", Artifact),
                                             ("plot", Artifact)])


def make_pipeline(image: str | None = None, *, accelerators: bool = True,
                  parallelism: int = 0, sweep: bool = False, lone_threads: int = 0):
    """The pipeline function, its components built for ``image``.

    ``accelerators``: request ``accelerator_count`` x ``accelerator_type`` on the training
    and evaluation steps (off for a CPU-only cluster). ``parallelism``: how many students
    train at once (0: all). ``sweep``: the sweep graph (a ``plan-sweep`` step, then one
    student per cell of methods x ``seeds`` x ``grid``, see `components.plan_sweep`),
    with the run parameters ``seeds`` and ``grid``; without it the graph and parameters
    are those of a single seed and no grid (one student per method). ``lone_threads``
    (local runs): the TensorFlow threads of the steps outside the students' loop, which
    kfp's local runner runs one at a time, so that they use the cores the loop's two
    iterations share (set as the steps' ``RSLAD_TF_THREADS``; 0: the environment's).
    """
    c = components.build(image)

    def rslad_pipeline(
        dataset: str = "digits",
        data_dir: str = "",
        download: bool = False,
        # kfp compiles the default into the spec and never mutates it.
        methods: List[str] = list(PAPER_METHODS),  # noqa: B006
        student_model: str = "",
        teacher_uri: str = "",
        teacher_sha256: str = "",
        teacher_autoattack_record: str = "",
        teacher_autoattack_record_sha256: str = "",
        teacher_method: str = "trades",
        teacher_model: str = "",
        surrogate_model: str = "",
        surrogate_seed: int = 1,
        epochs: int = 0,
        teacher_epochs: int = 0,
        surrogate_epochs: int = 0,
        max_steps: int = 0,
        batch_size: int = 0,
        epsilon: float = 0.0,
        attack_steps: int = 0,
        seed: int = 0,
        # kfp compiles the default into the spec and never mutates it.
        seeds: List[int] = [],  # noqa: B006
        grid: str = "",
        checkpoint: str = "best",
        teacher_cache: bool = False,
        select_n_examples: int = 0,
        eval_n_examples: int = 0,
        eval_batch_size: int = 256,
        whitebox_attacks: str = ",".join(WHITEBOX_ATTACKS),
        blackbox_attacks: str = ",".join(BLACKBOX_ATTACKS),
        autoattack_options: str = "",
        square_options: str = "",
        autoattack_impl: str = "",
        export_formats: str = "",
        accelerator_type: str = DEFAULT_ACCELERATOR,
        accelerator_count: int = 1,
    ) -> ReportOutputs:
        """Numeric parameters of 0 and empty strings keep the presets' values (the paper's
        for CIFAR, the demo's for digits); ``epsilon`` 0 is the dataset's threat model.
        ``autoattack_options`` / ``square_options``: JSON overrides of the reference
        AutoAttack (white-box) and Square (black-box) settings, e.g. ``{"n_queries": 1000}``,
        for smoke tests and time budgets ("" = the paper's settings; the report says when
        they were changed). ``autoattack_impl``: "native" (the toolkit's TensorFlow
        AutoAttack and Square) or "reference" (pyautoattack); "" = the suite's default.
        ``teacher_autoattack_record``: the URI of an eval JSON recorded for the teacher file
        itself (``python -m rslad_tf.evaluate TEACHER --out FILE``), pinned by
        ``teacher_autoattack_record_sha256`` when given: the teacher's AutoAttack column
        comes from it when it applies (same file, same settings, the teacher's other
        columns, measured in this run, agree with it); "" = run AutoAttack on the teacher.
        ``teacher_cache``: the ARD, IAD and RSLAD students compute the teacher's logits on
        each clean training image (and augmentation) once and reuse them (docs/speed.md).
        ``export_formats``: comma-separated artifacts to export and evaluate per student
        (saved_model, litert, litert-int8, onnx; docs/export.md); "" = none. Sweeps
        (docs/pipeline.md): ``seeds`` the students' training seeds ([] = ``seed``),
        ``grid`` a JSON list of ``--set`` override objects, one cell each ("" = none)."""
        device = dict(device_type=accelerator_type,
                      device_count=accelerator_count if accelerators else 0)
        train_args = dict(epsilon=epsilon, attack_steps=attack_steps, max_steps=max_steps,
                          batch_size=batch_size, eval_n_examples=select_n_examples,
                          checkpoint=checkpoint, **device)
        eval_args = dict(n_examples=eval_n_examples, epsilon=epsilon,
                         batch_size=eval_batch_size, seed=seed,
                         autoattack_impl=autoattack_impl, **device)

        def accelerate(task, *, cache: bool):
            if accelerators:
                task.set_accelerator_type(accelerator_type)
                task.set_accelerator_limit(accelerator_count)
            task.set_caching_options(cache)
            return task

        def alone(task):
            if lone_threads:
                task.set_env_variable("RSLAD_TF_THREADS", str(lone_threads))
            return task

        data = c.prepare_data(dataset=dataset, data_dir=data_dir, download=download)
        data.set_display_name("prepare-data")
        trained = c.train_teacher(data=data.outputs["data"], method=teacher_method,
                                  model=teacher_model, teacher_uri=teacher_uri,
                                  epochs=teacher_epochs, seed=seed, **train_args)
        alone(accelerate(trained.set_display_name("train-teacher"), cache=False))
        teacher = c.import_teacher(data=data.outputs["data"], trained=trained.outputs["teacher"],
                                   uri=teacher_uri, expected_sha256=teacher_sha256,
                                   method=teacher_method)
        alone(teacher.set_display_name("import-teacher").set_caching_options(False))
        # The surrogate's step also crafts the transfer images every black-box step would
        # craft alike (the pipeline's eval settings; a sweep cell at another eps crafts
        # its own).
        surrogate = c.train_surrogate(data=data.outputs["data"], model=surrogate_model,
                                      epochs=surrogate_epochs, seed=surrogate_seed,
                                      transfer_attacks=blackbox_attacks,
                                      transfer_n_examples=eval_n_examples,
                                      transfer_epsilon=epsilon,
                                      transfer_batch_size=eval_batch_size, transfer_seed=seed,
                                      **train_args)
        alone(accelerate(surrogate.set_display_name("train-surrogate"), cache=False))

        if sweep:
            plan = c.plan_sweep(methods=methods, seeds=seeds, seed=seed, grid=grid,
                                dataset=dataset, student_model=student_model,
                                epsilon=epsilon)
            plan.set_display_name("plan-sweep")
            loop = dsl.ParallelFor(plan.output, parallelism=parallelism)
        else:
            loop = dsl.ParallelFor(methods, parallelism=parallelism)
        with loop as item:
            if sweep:
                # A cell: its method, seed, overrides and the radius it is evaluated at.
                method, student_seed, cell_epsilon = item.method, item.seed, item.epsilon
                cell = dict(overrides=item.overrides, grid_cell=item.grid_cell)
            else:
                method, student_seed, cell_epsilon, cell = item, seed, epsilon, {}
            cell_eval_args = dict(eval_args, epsilon=cell_epsilon)
            student = c.distill_student(data=data.outputs["data"],
                                        teacher=teacher.outputs["teacher"], method=method,
                                        model=student_model, epochs=epochs,
                                        teacher_cache=teacher_cache,
                                        **dict(train_args, seed=student_seed), **cell)
            accelerate(student.set_display_name("distill-student"), cache=False)
            whitebox = c.evaluate_whitebox(data=data.outputs["data"],
                                           model=student.outputs["student"],
                                           attacks=whitebox_attacks,
                                           autoattack_options=autoattack_options,
                                           **cell_eval_args)
            accelerate(whitebox.set_display_name("evaluate-whitebox"), cache=True)
            blackbox = c.evaluate_blackbox(data=data.outputs["data"],
                                           model=student.outputs["student"],
                                           surrogate=surrogate.outputs["surrogate"],
                                           attacks=blackbox_attacks,
                                           square_options=square_options, **cell_eval_args)
            accelerate(blackbox.set_display_name("evaluate-blackbox"), cache=True)
            # Deployment artifacts, evaluated as they ship (CPU: no accelerator).
            exported = c.export_student(data=data.outputs["data"],
                                        model=student.outputs["student"],
                                        surrogate=surrogate.outputs["surrogate"],
                                        formats=export_formats, n_examples=eval_n_examples,
                                        epsilon=cell_epsilon, batch_size=eval_batch_size,
                                        seed=seed,
                                        square_options=square_options)
            exported.set_display_name("export-student").set_caching_options(True)

        # The teacher's white-box row heads the table (the paper reports its teacher too).
        teacher_eval = c.evaluate_whitebox(
            data=data.outputs["data"], model=teacher.outputs["teacher"],
            attacks=whitebox_attacks, autoattack_options=autoattack_options,
            recorded_autoattack=teacher_autoattack_record,
            recorded_autoattack_sha256=teacher_autoattack_record_sha256, **eval_args)
        alone(accelerate(teacher_eval.set_display_name("evaluate-teacher"), cache=True))
        report = c.make_report(whitebox=dsl.Collected(whitebox.outputs["results"]),
                               blackbox=dsl.Collected(blackbox.outputs["results"]),
                               teacher=teacher_eval.outputs["results"],
                               artifacts=dsl.Collected(exported.outputs["results"]))
        report.set_display_name("make-report")
        return ReportOutputs(report=report.outputs["report"], table=report.outputs["table"],
                             plot=report.outputs["plot"])

    func = rslad_pipeline if sweep else _without_parameters(rslad_pipeline, SWEEP_PARAMETERS)
    return dsl.pipeline(name=PIPELINE_NAME,
                        description="Robust Soft Label Adversarial Distillation (RSLAD, ICCV "
                                    "2021) against natural, SAT, TRADES, ARD and IAD "
                                    "students: white- and black-box robustness, the paper's "
                                    "table.")(func)


# The run parameters only the sweep graph declares (`make_pipeline(sweep=True)`).
SWEEP_PARAMETERS = ("seeds", "grid")


def _without_parameters(pipeline_func, names):
    """``pipeline_func`` as kfp sees it without the parameters ``names`` (which then keep
    their defaults): kfp reads a pipeline's parameters from its signature and calls it
    with them positionally."""
    import functools
    import inspect

    signature = inspect.signature(pipeline_func)
    kept = [p for p in signature.parameters.values() if p.name not in names]

    @functools.wraps(pipeline_func)
    def wrapper(*args, **kwargs):
        return pipeline_func(**dict(zip((p.name for p in kept), args)), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=kept)
    return wrapper


def compile_pipeline(out: str, image: str | None = None, *, accelerators: bool = True,
                     parallelism: int = 0, sweep: bool = False,
                     defaults: dict | None = None) -> str:
    """Write the pipeline's YAML (IR) to ``out``; returns the path. ``sweep``: the sweep
    graph (`make_pipeline`); ``defaults``: run parameters compiled in as the defaults
    (a study's)."""
    from kfp import compiler

    if not out.endswith((".yaml", ".yml", ".json")):
        raise UserError(f"--out {out!r} must end in .yaml (or .json)")
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UserError(f"directory {directory!r} of --out does not exist")
    compiler.Compiler().compile(
        make_pipeline(image, accelerators=accelerators, parallelism=parallelism,
                      sweep=sweep), out, pipeline_parameters=defaults or None)
    return out


# -- local runs ------------------------------------------------------------------------
# Named local configurations. `digits` is the demo (13 minutes on 2 CPU cores, see
# pipelines.demo); `digits-tiny` a smoke test of the whole graph in a couple of minutes.
# The teacher the demo distils from, as the paper distils from a released one: the embedded
# study's strong eps-0.2 teacher (docs/study.md; SAT, small_cnn width 64, 100 epochs),
# shipped in the study's record and pinned by its SHA-256. `python -m rslad_tf.train
# --preset digits-teacher` trains one by the same recipe; `python -m pipelines.demo
# --train-teacher` trains it inside the pipeline instead.
SHIPPED_DIGITS_TEACHER = os.path.join(REPO_ROOT, "docs", "study_runs", "teacher-w64-eps0.2",
                                      "checkpoints", "last.keras")
SHIPPED_DIGITS_TEACHER_SHA256 = (
    "f2339e8fe0d75dfdde4b85bf9dcec26c4087d707ed97a109a3474d93fd0d40d7")
# Its white-box evaluation on the 450 test points, recorded by the command in
# docs/pipeline.md ("A recorded AutoAttack for the teacher"): the demo measures the
# teacher's five cheap columns and takes AutoAttack, 13 of the demo's minutes on the
# project's 2-core VM, from this record when they agree with it
# (`rslad_tf.evaluation.recorded`). `python -m pipelines.demo --evaluate-teacher` runs it.
SHIPPED_DIGITS_TEACHER_EVAL = os.path.join(REPO_ROOT, "docs", "demo_teacher_eval.json")
SHIPPED_DIGITS_TEACHER_EVAL_SHA256 = (
    "79014270fbc20bda552f48a9c74d0750febde44b2f3b97e5a158b31eda65ceb1")
# The demo's surrogate (SAT, small_cnn width 32, for the transfer attacks only) trains 20 of
# the presets' 100 epochs: the black-box columns need a robust surrogate, not a converged
# one, and the demo's 15 minutes do not hold a fourth hundred-epoch run. On the 200
# selection points it reached 99.5% clean and 70.0% PGD-20 in 20 epochs, 99.0% and 77.0%
# in 30 (docs/pipeline.md), which cost the demo about 25 s more.
DEMO_SURROGATE_EPOCHS = 20

LOCAL_PRESETS = {
    # The demo (`make demo`, pipelines.demo): the study's regime that matches the paper's
    # conditions (eps 0.2, width-4 students, the strong teacher), the digits presets'
    # budget (100 epochs, each method's rate from the grid), all 450 test points, last
    # checkpoints (the best one is chosen on test points), the teacher's clean logits
    # computed once per distilling student (digits has no augmentation: every later epoch
    # reads them; docs/speed.md). AutoAttack (standard) and Square (5,000 queries) run in
    # the toolkit's TensorFlow implementation, about four times faster on CPU than the
    # reference code under the torch backend.
    "digits": dict(dataset="digits", teacher_uri=SHIPPED_DIGITS_TEACHER,
                   teacher_sha256=SHIPPED_DIGITS_TEACHER_SHA256,
                   teacher_autoattack_record=SHIPPED_DIGITS_TEACHER_EVAL,
                   teacher_autoattack_record_sha256=SHIPPED_DIGITS_TEACHER_EVAL_SHA256,
                   teacher_method=presets.DIGITS_TEACHER_METHOD,
                   surrogate_epochs=DEMO_SURROGATE_EPOCHS, checkpoint="last",
                   teacher_cache=True, select_n_examples=200, eval_n_examples=450,
                   autoattack_impl="native"),
    # Every step and attack of the real run, at a size where the numbers mean nothing:
    # one-step epochs of narrow models, 16 evaluation points, and the reference AutoAttack
    # and Square with a handful of iterations and queries (recorded as non-standard).
    "digits-tiny": dict(dataset="digits", teacher_epochs=1, surrogate_epochs=1, epochs=1,
                        max_steps=2, attack_steps=2, select_n_examples=32,
                        eval_n_examples=16, student_model="small_cnn:width=8",
                        teacher_model="small_cnn:width=8",
                        surrogate_model="small_cnn:width=6",
                        autoattack_options='{"n_iter": 2, "n_restarts": 1, '
                                           '"n_target_classes": 1, "n_queries": 10}',
                        square_options='{"n_queries": 10}'),
}


def _find_outputs(run_root: str) -> dict:
    """The make-report outputs under a local run's root."""
    found = {}
    for dirpath, _, filenames in os.walk(run_root):
        if os.path.basename(dirpath) == "make-report":
            for name in ("report", "table", "plot"):
                if name in filenames:
                    found[name] = os.path.join(dirpath, name)
    return found


def is_sweep(params: dict) -> bool:
    """Whether ``params`` ask for the sweep graph: seeds or a grid given."""
    return bool(params.get("seeds")) or bool(str(params.get("grid") or "").strip())


def sweep_cells(params: dict) -> list[dict]:
    """The cells (`components.plan_sweep.plan_cells_fn`) of a run's parameters."""
    from components.plan_sweep import plan_cells_fn

    return plan_cells_fn(params.get("methods", PAPER_METHODS), params.get("seeds") or [],
                         int(params.get("seed") or 0), params.get("grid") or "",
                         float(params.get("epsilon") or 0.0))


def count_steps(params: dict) -> int:
    """Steps a run executes: data, teacher (train, import, white-box evaluation),
    surrogate, report, and four per method (train, white-box, black-box, export); in a
    sweep, the plan and four per cell."""
    if is_sweep(params):
        return 7 + 4 * len(sweep_cells(params))
    return 6 + 4 * len(params.get("methods", PAPER_METHODS))


def check_sweep(params: dict) -> None:
    """A sweep's cells applied to their presets here (`check_cells_apply`), so a bad grid
    key or value is one line before the run starts."""
    from components.plan_sweep import check_cells_apply

    check_cells_apply(sweep_cells(params), params.get("dataset") or "digits",
                      params.get("student_model") or "")


def check_sweep_of_spec(spec: dict, values: dict) -> None:
    """`check_sweep` of the run parameters a package would run with: its defaults, then
    ``values`` (what compile or submit sets)."""
    definitions = parameters.definitions(spec)
    params = {name: parameters.default_of(d) for name, d in definitions.items()
              if "defaultValue" in d}
    params.update(values)
    if is_sweep(params):
        check_sweep(params)


def trained_architectures(params: dict) -> list[str]:
    """The architectures (`rslad_tf.models` names) of every model a run of ``params``
    trains: the students (each method's preset, or ``student_model``, or a grid cell's
    ``model``), the surrogate, and the teacher unless it is imported."""
    from components.common import parse_model_spec
    from components.plan_sweep import parse_grid
    from components.train_teacher import DEFAULT_SURROGATE_MODEL, SURROGATE_MODELS
    from components.training import student_preset_name, teacher_preset_name
    from rslad_tf.config import presets

    dataset = params.get("dataset") or "digits"
    names = set()
    student = parse_model_spec(params.get("student_model") or "")[0]
    for method in params.get("methods") or PAPER_METHODS:
        names.add(student or presets.get(student_preset_name(dataset, method, student)).model)
    for cell in parse_grid(params.get("grid") or ""):
        if cell.get("model"):
            names.add(str(cell["model"]))
    names.add(parse_model_spec(params.get("surrogate_model") or SURROGATE_MODELS.get(
        dataset, DEFAULT_SURROGATE_MODEL))[0])
    if not params.get("teacher_uri"):
        names.add(parse_model_spec(params.get("teacher_model") or "")[0]
                  or presets.get(teacher_preset_name(dataset)).model)
    return sorted(names)


@contextlib.contextmanager
def _step_environment(threads: int = 0, onednn_kernels: bool = False):
    """Environment of the steps the local runner starts, restored afterwards: progress
    printed as it happens (unbuffered), this repository importable from any working
    directory (installed or not), the TensorFlow thread count, and with
    ``onednn_kernels`` TensorFlow's oneDNN kernels (`rslad_tf.common.onednn`) unless the
    environment says otherwise."""
    from rslad_tf.common import onednn

    repo = REPO_ROOT
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    changes = {"PYTHONUNBUFFERED": "1",
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               "PYTHONPATH": os.pathsep.join([repo] + [p for p in paths if p != repo])}
    if threads:
        changes["RSLAD_TF_THREADS"] = str(threads)
    if onednn_kernels and onednn.TENSORFLOW_SWITCH not in os.environ:
        changes[onednn.TENSORFLOW_SWITCH] = "1"
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_local(out_dir: str, params: dict, *, image: str | None = None, threads: int = 0,
              verbose: bool = False) -> dict:
    """Run the pipeline with kfp's local subprocess runner (no Docker, no cluster): every
    step runs as a Python process of this environment, importing this repository.

    Artifacts go to ``out_dir/pipeline_root``, the full log to ``out_dir/pipeline.log``; the
    terminal shows numbered steps and their progress (everything with ``verbose``).
    Returns the paths of the report, the table JSON and the plot, copied into ``out_dir`` as
    report.md, table.json and clean_vs_aa.png.
    """
    from kfp import local

    from pipelines.progress import ProgressFilter

    if fileio.holds_something(out_dir):
        raise UserError(f"{out_dir!r} is not empty; choose another --out")
    params = dict(params)
    sweep = is_sweep(params)
    if sweep:
        check_sweep(params)
    else:
        for name in SWEEP_PARAMETERS:  # empty: the graph without sweeps has no such input
            params.pop(name, None)
    os.makedirs(out_dir, exist_ok=True)
    root = os.path.abspath(os.path.join(out_dir, "pipeline_root"))
    workspace = os.path.abspath(os.path.join(out_dir, "workspace"))
    os.makedirs(workspace, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               workspace_root=workspace, raise_on_error=True)
    # The steps outside the loop run alone: give them every core the loop's steps share.
    cores = os.cpu_count() or 1
    pipeline = make_pipeline(image, accelerators=True, sweep=sweep,
                             lone_threads=cores if threads and threads < cores else 0)
    # The local runner ignores resource requests: do not let the steps expect a GPU.
    params.setdefault("accelerator_count", 0)
    log_path = os.path.join(out_dir, "pipeline.log")
    stdout, builtin_print = sys.stdout, builtins.print
    root_logger = logging.getLogger()
    root_handlers, root_level = root_logger.handlers[:], root_logger.level
    # TensorFlow's oneDNN kernels, 1.6-2.6x faster on CPUs without AVX-512, when no model
    # the run trains meets their weight-gradient bug (`rslad_tf.common.onednn`).
    from rslad_tf.common import onednn

    kernels = onednn.safe_for_tensorflow_kernels(trained_architectures(params))
    with open(log_path, "w") as log_file, warnings.catch_warnings(), \
            _step_environment(threads, onednn_kernels=kernels):
        # "settings ['accelerator'] have no effect in the local runner"; "non-Python image".
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        sys.stdout = ProgressFilter(stdout, log_file, total=count_steps(params),
                                    verbose=verbose)
        try:
            task = pipeline(**params)
        except RuntimeError as exc:
            first = _ANSI.sub("", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise UserError(f"the local pipeline run failed: {first}; the full log is "
                            f"{log_path}") from None
        finally:
            sys.stdout.flush()
            sys.stdout = stdout
            # kfp indents step output by swapping `print`, and points the root logger at
            # the stdout of the moment; each saves and restores the previous value, so two
            # steps running at once can leave one step's `print` or handler in place, and a
            # handler writing to this (then closed) log file breaks later logging calls.
            builtins.print = builtin_print
            root_logger.handlers[:] = root_handlers
            root_logger.setLevel(root_level)
    try:
        paths = {name: task.outputs[name].path for name in ("report", "table", "plot")}
    except (AttributeError, KeyError, TypeError):
        paths = _find_outputs(root)
    if set(paths) != {"report", "table", "plot"}:
        raise UserError(f"the local run finished but wrote no report under {root}")
    copies = {"report": "report.md", "table": "table.json", "plot": "clean_vs_aa.png"}
    result = {}
    for name, target in copies.items():
        dest = os.path.join(out_dir, target)
        shutil.copyfile(paths[name], dest)
        result[name] = dest
    result["pipeline_root"] = root
    result["log"] = log_path
    return result


def local_params(preset: str, overrides: dict) -> dict:
    """The local preset's parameters with ``overrides`` (None values skipped)."""
    if preset not in LOCAL_PRESETS:
        raise UserError(f"unknown local preset {preset!r}; choose one of: "
                        f"{', '.join(LOCAL_PRESETS)}")
    params = dict(LOCAL_PRESETS[preset])
    params.update({k: v for k, v in overrides.items() if v is not None})
    return params


def study_params(name: str, overrides: dict | None = None) -> dict:
    """The run parameters of the study ``name`` (pipelines/studies.py): its base local
    preset, its own parameters, then ``overrides`` (None values skipped)."""
    from pipelines import studies

    study = studies.get(name)
    params = dict(LOCAL_PRESETS[study["base"]]) if study.get("base") else {}
    params.update(study["params"])
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return params


def param_text(value) -> str:
    """A run parameter's value as ``--param NAME=VALUE`` takes it."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def parse_seeds_option(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2] (each a non-negative integer, once)."""
    from components.plan_sweep import parse_seeds

    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise UserError("--seeds: no seed given; e.g. --seeds 0,1,2")
    for item in items:
        if not item.isdigit():
            raise UserError(f"--seeds: {item!r} is not a non-negative integer; e.g. "
                            "--seeds 0,1,2")
    return parse_seeds([int(item) for item in items])


def parse_methods(text: str) -> list[str]:
    from components.common import parse_list

    methods = parse_list(text, METHOD_NAMES, "method")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {text}")
    return methods


# -- submitting to a cluster (the client: pipelines/submit.py) ---------------------------
@contextlib.contextmanager
def pipeline_package(package: str | None, image: str | None = None, *,
                     accelerators: bool = True, parallelism: int = 0, sweep: bool = False):
    """``(path, spec, compiled_now)`` of ``package``, or of the pipeline compiled now into a
    temporary folder (removed afterwards; ``sweep``: the sweep graph)."""
    import tempfile

    if package is not None:
        yield package, parameters.load_spec(package), False
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(os.path.join(tmp, "rslad.yaml"), image,
                                accelerators=accelerators, parallelism=parallelism,
                                sweep=sweep)
        yield path, parameters.load_spec(path), True


def default_spec() -> dict:
    """The compiled pipeline spec with the default options and every run parameter (the
    sweep graph's, which adds ``seeds`` and ``grid``)."""
    with pipeline_package(None, sweep=True) as (_, spec, _):
        return spec


def parse_param(text: str) -> tuple[str, object]:
    """``name=value`` typed as this pipeline declares the parameter (see
    `pipelines.parameters.parse_param`)."""
    return parameters.parse_param(text, parameters.definitions(default_spec()))


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m pipelines.rslad_pipeline",
                            description="Compile, run locally or submit the RSLAD "
                                        "Kubeflow pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)

    def image_and_resources(p):
        p.add_argument("--image", help="component image (default $RSLAD_TF_IMAGE or "
                                       f"{components.DEFAULT_IMAGE})")
        p.add_argument("--no-accelerators", action="store_true",
                       help="request no accelerators (CPU-only cluster)")
        p.add_argument("--parallelism", type=int, default=0,
                       help="students trained at once (0: all)")

    def study_option(p, what):
        from pipelines.studies import STUDIES

        p.add_argument("--study", choices=sorted(STUDIES), metavar="NAME",
                       help=f"a named sweep of pipelines/studies.py ({', '.join(STUDIES)}): "
                            f"{what}")

    p = sub.add_parser("compile", help="write the pipeline YAML")
    p.add_argument("--out", required=True, help="output file, e.g. rslad.yaml")
    p.add_argument("--sweep", action="store_true",
                   help="compile the sweep graph (run parameters seeds and grid; "
                        "docs/pipeline.md)")
    study_option(p, "the sweep graph with the study's parameters as its defaults")
    image_and_resources(p)

    p = sub.add_parser("run-local", help="run the pipeline on this machine (kfp local runner)")
    p.add_argument("--preset", choices=sorted(LOCAL_PRESETS),
                   help="local configuration (default digits)")
    study_option(p, "its parameters instead of a preset's (the options below still win)")
    p.add_argument("--seeds", help="comma-separated training seeds of the students, one "
                                   "run each (a sweep; default: --seed alone)")
    p.add_argument("--grid", help="JSON list of --set override objects, one student per "
                                  "cell and method and seed, e.g. "
                                  "'[{\"model_kwargs.width\": 8}, "
                                  "{\"model_kwargs.width\": 16}]' (a sweep)")
    p.add_argument("--out", help="output directory (default local_runs/<preset>-<time>)")
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, help="teacher epochs")
    p.add_argument("--surrogate-epochs", type=int, help="surrogate epochs")
    p.add_argument("--max-steps", type=int, help="cap on training steps per epoch")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    p.add_argument("--n-examples", type=int, help="test images per evaluation")
    p.add_argument("--whitebox-attacks", help=f"subset of {','.join(WHITEBOX_ATTACKS)}")
    p.add_argument("--blackbox-attacks", help=f"subset of {','.join(BLACKBOX_ATTACKS)}")
    p.add_argument("--export-formats", help="export and evaluate each student as these "
                                            "artifacts: saved_model,litert,litert-int8,onnx "
                                            "(default none; docs/export.md)")
    p.add_argument("--teacher-uri", help="import this .keras teacher instead of training one")
    p.add_argument("--teacher-sha256", help="expected SHA-256 of --teacher-uri")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow threads per step (default: all cores)")
    p.add_argument("--verbose", action="store_true",
                   help="show kfp's full output (it always goes to OUT/pipeline.log)")
    p.add_argument("--image", help="image name recorded in the components (not used locally)")

    p = sub.add_parser("submit", help="create a run on a Kubeflow Pipelines cluster",
                       add_help=False)
    submit.add_help_with_parameters(p, default_spec)
    submit.add_submit_arguments(p)
    study_option(p, "its parameters, under any --param given (the sweep graph)")
    image_and_resources(p)

    p = sub.add_parser("follow", help="follow a run on the cluster and fetch its report")
    p.add_argument("--run-id", required=True, help="the run id `submit` printed")
    p.add_argument("--package", help="the compiled pipeline YAML the run was made from "
                                     "(default: this version's pipeline)")
    submit.add_connection_arguments(p)

    p = sub.add_parser("params", help="list the pipeline's parameters, types and defaults")
    p.add_argument("--package", help="a compiled pipeline YAML (default: this version's)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "compile":
        if args.parallelism < 0:
            raise UserError("--parallelism must be 0 or positive")
        defaults = None
        if args.study:
            defaults = study_params(args.study)
            # The same checks as --param values get (seeds as integers, grid keys).
            for name, value in defaults.items():
                parameters.check_value(name, value)
            # Every cell applied to its preset: a bad value stops the compile, not the run.
            check_sweep({"dataset": "digits", **defaults})
        path = compile_pipeline(args.out, args.image, accelerators=not args.no_accelerators,
                                parallelism=args.parallelism,
                                sweep=bool(args.sweep or args.study), defaults=defaults)
        print(f"wrote {path} (image {args.image or components.image()})")
    elif args.command == "run-local":
        overrides = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs,
                     "surrogate_epochs": args.surrogate_epochs, "max_steps": args.max_steps,
                     "eval_n_examples": args.n_examples, "seed": args.seed,
                     "whitebox_attacks": args.whitebox_attacks,
                     "blackbox_attacks": args.blackbox_attacks,
                     "export_formats": args.export_formats,
                     "teacher_uri": args.teacher_uri, "teacher_sha256": args.teacher_sha256,
                     "grid": args.grid}
        if args.methods:
            overrides["methods"] = parse_methods(args.methods)
        if args.seeds is not None:
            overrides["seeds"] = parse_seeds_option(args.seeds)
        if args.grid is not None:
            from components.plan_sweep import parse_grid

            parse_grid(args.grid)  # a bad key: one line before the run
        if args.study and args.preset:
            raise UserError("--study and --preset both name the run's parameters; give one")
        if args.export_formats:
            from components.export_student import parse_formats

            parse_formats(args.export_formats)  # a bad format: one line before the run
        for name in ("epochs", "teacher_epochs", "surrogate_epochs", "max_steps",
                     "n_examples"):
            value = getattr(args, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        name = args.study or args.preset or "digits"
        params = (study_params(args.study, overrides) if args.study
                  else local_params(name, overrides))
        out = args.out or os.path.join(
            "local_runs", f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        result = run_local(out, params, image=args.image, threads=args.threads,
                           verbose=args.verbose)
        with open(result["report"]) as f:
            print(f.read().split("![", 1)[0].rstrip())
        print(f"\nreport: {result['report']}\ntable: {result['table']}\n"
              f"plot: {result['plot']}\nartifacts: {result['pipeline_root']}\n"
              f"log: {result['log']}")
    elif args.command == "submit":
        if args.parallelism < 0:
            raise UserError("--parallelism must be 0 or positive")
        given = {text.partition("=")[0].strip() for text in args.param}
        if args.study:
            # The study's values as --param texts, under the ones given.
            args.param = [f"{name}={param_text(value)}"
                          for name, value in study_params(args.study).items()
                          if name not in given] + list(args.param)
        sweep = bool(args.study) or bool(given & set(SWEEP_PARAMETERS))
        with pipeline_package(args.package, args.image, accelerators=not args.no_accelerators,
                              parallelism=args.parallelism, sweep=sweep) as (
                package, spec, compiled_now):
            if sweep:
                # Every cell applied to its preset before anything is sent.
                check_sweep_of_spec(spec, parameters.parse_params(
                    args.param, parameters.definitions(spec)))
            submit.run_submit(args, package, spec, compiled_now=compiled_now)
    elif args.command == "follow":
        with pipeline_package(args.package) as (_, spec, _):
            submit.run_follow(args, spec)
    elif args.command == "params":
        # Without --package: every parameter, those of sweeps (seeds, grid) included.
        with pipeline_package(args.package, sweep=True) as (_, spec, _):
            print(parameters.describe(spec))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(run_cli(main))
