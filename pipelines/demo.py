"""`make demo`: the whole Kubeflow pipeline on this machine, on the embedded digits.

    python -m pipelines.demo [--out demo_out] [--quick] [--methods LIST]
        [--evaluate-teacher] [--train-teacher] [--verbose]

Runs the pipeline of ``pipelines/rslad_pipeline.py`` with kfp's local runner (no cluster,
no Docker) in the regime of the embedded study that matches the paper's conditions
(docs/study.md: eps 0.2, width-4 students, the strong teacher): the teacher the repository
ships (SAT, width 64, checked against its SHA-256; ``--train-teacher`` trains it in the
pipeline instead) with its AutoAttack column taken from its pinned record when its other
columns, measured here, agree with it (``--evaluate-teacher`` runs it), a SAT surrogate
for the black-box attacks, the six methods (natural, SAT, TRADES, ARD, IAD, RSLAD) two at
a time with the digits presets' budget, each evaluated white-box (clean, FGSM, PGD_SAT,
PGD_TRADES, CW_inf, AutoAttack) and black-box (transfer PGD / CW from the surrogate,
Square) on all 450 test images, then the paper-style table with the teacher's row:
printed here and written to the output folder as report.md, table.json and
clean_vs_aa.png (next to all artifacts under pipeline_root/ and the full log
pipeline.log).

The budget is the ``digits`` local preset: its pipeline took 6 min 18 s to 11 min 6 s on
the project's 2-core VM (README), 5 min 19 s to 9 min 18 s of it for the six students;
``--methods`` trains fewer, and ``--quick`` runs the ``digits-tiny`` smoke test instead.
An output folder that already holds results is never overwritten: the run goes to a new
timestamped subfolder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from rslad_tf.common.errors import UserError, run_cli

DEFAULT_OUT = "demo_out"


def choose_out_dir(base: str) -> str:
    """``base`` when it is absent or empty, else a new ``base/run-<time>`` subfolder."""
    if os.path.exists(base) and not os.path.isdir(base):
        raise UserError(f"{base!r} exists and is not a directory; choose another --out")
    if not os.path.isdir(base) or not os.listdir(base):
        return base
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = os.path.join(base, f"run-{stamp}")
    n = 1
    while os.path.exists(candidate):
        n += 1
        candidate = os.path.join(base, f"run-{stamp}-{n}")
    return candidate


def _reference(params: dict) -> str:
    """How AutoAttack and Square run: standard, or with which overrides; which code."""
    parts = []
    for name, key in (("AutoAttack", "autoattack_options"), ("Square", "square_options")):
        options = json.loads(params.get(key) or "{}")
        parts.append(f"{name} " + (", ".join(f"{k}={v}" for k, v in options.items())
                                   if options else "standard"))
    impl = params.get("autoattack_impl")
    return " and ".join(parts) + (f", {impl} implementation" if impl else "")


def describe_plan(params: dict, threads: int) -> str:
    from components.training import student_preset_name, teacher_preset_name
    from pipelines.rslad_pipeline import count_steps
    from rslad_tf.common.vocabulary import PAPER_METHODS
    from rslad_tf.config import presets

    methods = params.get("methods") or list(PAPER_METHODS)
    dataset = params.get("dataset") or "digits"
    if params.get("teacher_uri"):
        teacher = (f"teacher {os.path.relpath(params['teacher_uri'])} (SHA-256 "
                   f"{(params.get('teacher_sha256') or '-')[:12]}...)")
        record = params.get("teacher_autoattack_record")
        if record:
            teacher += (f", its AutoAttack taken from {os.path.relpath(record)} when its "
                        "other columns agree with it")
    else:
        epochs = (params.get("teacher_epochs")
                  or presets.get(teacher_preset_name(dataset)).epochs)
        teacher = f"teacher ({epochs} epochs)"
    student = presets.get(student_preset_name(dataset, methods[0]))
    epochs = params.get("epochs") or student.epochs
    model = params.get("student_model") or (
        f"{student.model}:width={student.model_kwargs['width']}"
        if "width" in student.model_kwargs else student.model)
    return (f"{count_steps(dict(params, methods=methods))} steps: {teacher}, surrogate "
            f"({params.get('surrogate_epochs')} epochs), {len(methods)} {model} students "
            f"({', '.join(methods)}; {epochs} epochs each, two at a time), "
            f"evaluated on {params.get('eval_n_examples')} test images ({_reference(params)}); "
            f"{threads} TensorFlow thread(s) per step")


def _pipeline():
    """(LOCAL_PRESETS, run_local) of the repository's pipelines/ folder, which is not
    installed with the package (pyproject.toml); a one-line error outside a checkout."""
    try:
        from pipelines.rslad_pipeline import LOCAL_PRESETS, run_local
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipelines", "components"):
            raise
        raise UserError("the demo runs the pipeline of the repository's pipelines/ folder: run "
                        "it from the root of a checkout (`make demo`)") from None
    return LOCAL_PRESETS, run_local


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="Run the RSLAD Kubeflow pipeline locally on the embedded digits and print "
                    "the paper-style table (about 11 minutes on the project's 2-core VM).")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT}; a folder holding results "
                             "gets a new timestamped subfolder)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test budget (a few minutes; numbers meaningless)")
    parser.add_argument("--train-teacher", action="store_true",
                        help="train the teacher in the pipeline (SAT, width 64, 100 "
                             "epochs; the study's took 18 minutes on 2 cores beside another "
                             "run) instead of distilling from the one the repository ships")
    parser.add_argument("--evaluate-teacher", action="store_true",
                        help="run AutoAttack on the teacher in this run instead of taking "
                             "its recorded result (13 more minutes on the project's 2-core "
                             "VM); its other columns are measured either way")
    parser.add_argument("--methods",
                        help="comma-separated methods to train (default: the paper's six, "
                             "natural,sat,trades,ard,iad,rslad); e.g. sat,rslad for the "
                             "study's comparison, with two students instead of six")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow threads per step (default 1: two steps run at once)")
    parser.add_argument("--verbose", action="store_true", help="show kfp's full output")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads <= 0:
        raise UserError(f"--threads must be positive, got {args.threads}")
    LOCAL_PRESETS, run_local = _pipeline()
    from pipelines.rslad_pipeline import parse_methods

    preset = "digits-tiny" if args.quick else "digits"
    params = dict(LOCAL_PRESETS[preset])
    if args.train_teacher:
        params.pop("teacher_uri", None)
        params.pop("teacher_sha256", None)
    if args.methods:
        params["methods"] = parse_methods(args.methods)
    if args.train_teacher or args.evaluate_teacher:
        params.pop("teacher_autoattack_record", None)
        params.pop("teacher_autoattack_record_sha256", None)
    out_dir = choose_out_dir(args.out)
    if out_dir != args.out:
        print(f"{args.out}/ already holds results: this run goes to {out_dir}/ "
              f"(`make clean-demo` removes {args.out}/)")
    print(f"RSLAD demo ({preset}): {describe_plan(params, args.threads)}")
    started = time.time()
    result = run_local(out_dir, params, threads=args.threads, verbose=args.verbose)
    minutes, seconds = divmod(int(time.time() - started), 60)
    with open(result["report"]) as f:
        report = f.read().split("![", 1)[0].rstrip()  # the table, not the embedded plot
    print()
    print(report)
    print(f"\nfinished in {minutes} min {seconds:02d} s. Written to {out_dir}/: report.md, "
          f"table.json, clean_vs_aa.png, pipeline.log, and every artifact under "
          f"pipeline_root/")


if __name__ == "__main__":
    sys.exit(run_cli(main))
