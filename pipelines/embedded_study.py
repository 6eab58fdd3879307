"""The embedded study of issue 12 on one machine: when do robust soft labels help a small
student? (protocol and results: docs/study.md)

    python -m pipelines.embedded_study run [--out runs/embedded-study] [--workers 2]
    python -m pipelines.embedded_study table [--out runs/embedded-study]

``run`` trains every run of the protocol that is not finished yet (a run directory with
``eval_last.json``, or for a validation run a complete ``history.csv``), ``--workers`` at
a time, each as its own ``python -m rslad_tf.train`` process, in the order the protocol's
dependencies allow: the learning-rate grid on the validation split, the teachers, then
the screen. A run that failed is reported and its directory left for inspection; it is
never overwritten (the trainer refuses an existing directory), so delete it to retry.
``table`` prints the learning-rate grid and the screen's table in Markdown from the run
directories, the tables docs/study.md shows.

The pipeline's sweep (``--study digits-embedded``) runs the same kind of cells on a
cluster; this driver exists because the study needs teachers at two radii and of two
strengths, and a pipeline run trains one teacher at one radius.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time

from rslad_tf.common.errors import UserError, run_cli

# The stated budget rule (docs/study.md): every method, student and teacher trains for
# the same number of epochs with the same step schedule.
EPOCHS = 100
MILESTONES = (75, 90)
WIDTHS = (4, 8, 16)
EPSILONS = (0.2, 0.3)
TEACHER_WIDTH = 64
TEACHER_LR = 0.05          # the digits SAT preset's rate; teachers are not tuned
WEAK_TEACHER_WIDTH = 16    # the weak teacher is the SAT student of this width
LR_GRID = (0.05, 0.15, 0.5)
LR_WIDTH, LR_EPSILON, LR_SEED = 8, 0.2, 0
VALIDATION_FRACTION = 0.2
SCREEN_SEEDS = (0,)
METHODS = ("sat", "rslad")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study: its directory name, the trainer's arguments and
    the runs it needs first."""
    name: str
    args: tuple
    needs: tuple = ()
    validation: bool = False


def _eps_tag(eps: float) -> str:
    return f"eps{eps:g}"


def teacher_name(strength: str, eps: float) -> str:
    """Directory of the strong teacher, or of the SAT student that serves as weak one."""
    if strength == "strong":
        return f"teacher-w{TEACHER_WIDTH}-{_eps_tag(eps)}"
    return f"screen-sat-w{WEAK_TEACHER_WIDTH}-{_eps_tag(eps)}-seed0"


def _common(eps: float, seed: int) -> tuple:
    return ("--epochs", str(EPOCHS), "--set", f"lr_milestones={list(MILESTONES)}",
            "--epsilon", f"{eps:g}", "--seed", str(seed), "--device-data", "on")


def _student(method: str, width: int, eps: float, seed: int, lr: float,
             teacher: str | None, out_root: str) -> tuple:
    args = ("--preset", f"digits-{method}", *_common(eps, seed),
            "--set", f"model_kwargs.width={width}", "--set", f"learning_rate={lr:g}")
    if teacher is not None:
        args += ("--teacher", os.path.join(out_root, teacher, "checkpoints", "last.keras"),
                 "--teacher-cache")
    return args


def lr_runs(out_root: str) -> list[Run]:
    """The learning-rate grid: each method at each rate on the validation split."""
    runs = []
    for method in METHODS:
        teacher = teacher_name("strong", LR_EPSILON) if method == "rslad" else None
        for lr in LR_GRID:
            args = _student(method, LR_WIDTH, LR_EPSILON, LR_SEED, lr, teacher, out_root)
            args += ("--set", f"validation_fraction={VALIDATION_FRACTION}", "--no-final-eval")
            runs.append(Run(f"lr-{method}-lr{lr:g}", args,
                            needs=(teacher,) if teacher else (), validation=True))
    return runs


def teacher_runs() -> list[Run]:
    """The strong teachers: SAT, width 64, at each radius."""
    return [Run(teacher_name("strong", eps),
                ("--preset", "digits-sat", *_common(eps, 0),
                 "--set", f"model_kwargs.width={TEACHER_WIDTH}",
                 "--set", f"learning_rate={TEACHER_LR:g}"))
            for eps in EPSILONS]


def chosen_learning_rates(out_root: str) -> dict[str, float] | None:
    """Each method's rate from the grid (highest final validation PGD-20, the smaller
    rate on a tie); None while the grid is incomplete."""
    chosen = {}
    for method in METHODS:
        scores = []
        for lr in LR_GRID:
            row = _last_row(os.path.join(out_root, f"lr-{method}-lr{lr:g}"))
            if row is None:
                return None
            scores.append((float(row["pgd20_acc"]), -lr))
        chosen[method] = -max(scores)[1]
    return chosen


def screen_runs(out_root: str, rates: dict[str, float]) -> list[Run]:
    """SAT alone and RSLAD from each teacher, every width and radius, the screen's seeds."""
    runs = []
    for seed in SCREEN_SEEDS:
        for eps in EPSILONS:
            for width in WIDTHS:
                runs.append(Run(f"screen-sat-w{width}-{_eps_tag(eps)}-seed{seed}",
                                _student("sat", width, eps, seed, rates["sat"], None,
                                         out_root)))
                for strength in ("strong", "weak"):
                    teacher = teacher_name(strength, eps)
                    runs.append(Run(
                        f"screen-rslad-{strength}-w{width}-{_eps_tag(eps)}-seed{seed}",
                        _student("rslad", width, eps, seed, rates["rslad"], teacher,
                                 out_root), needs=(teacher,)))
    return runs


def _last_row(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if len(rows) == EPOCHS else None


def is_done(out_root: str, run: Run) -> bool:
    run_dir = os.path.join(out_root, run.name)
    if run.validation:
        return _last_row(run_dir) is not None
    return os.path.isfile(os.path.join(run_dir, "eval_last.json"))


def all_runs(out_root: str) -> list[Run]:
    """Every run of the protocol known so far (the screen once the grid has chosen)."""
    # The radius-0.2 teacher first: the RSLAD grid waits for it.
    first_teacher, *other_teachers = teacher_runs()
    runs = [first_teacher, *lr_runs(out_root), *other_teachers]
    rates = chosen_learning_rates(out_root)
    return runs + (screen_runs(out_root, rates) if rates is not None else [])


def run_all(out_root: str, workers: int, log=print) -> int:
    """Train every unfinished run, at most `workers` at a time, each once its `needs` are
    done; returns the number of runs that failed."""
    os.makedirs(out_root, exist_ok=True)
    running, failed, tried = {}, set(), set()
    while True:
        for name, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                ok = proc.returncode == 0
                if not ok:
                    failed.add(name)
                log(f"{'done' if ok else f'FAILED (exit {proc.returncode})'} {name} "
                    f"in {time.time() - start:.0f} s")
        todo = [r for r in all_runs(out_root) if r.name not in tried
                and not is_done(out_root, r)]
        ready = [r for r in todo if all(is_done_name(out_root, n) for n in r.needs)]
        while ready and len(running) < workers:
            run = ready.pop(0)
            tried.add(run.name)
            running[run.name] = (_start(out_root, run), time.time())
            log(f"start {run.name}")
        if not running:
            for run in todo:
                log(f"not run: {run.name} (needs {', '.join(run.needs)})")
            return len(failed) + len(todo)
        time.sleep(5)


def is_done_name(out_root: str, name: str) -> bool:
    return any(r.name == name and is_done(out_root, r)
               for r in lr_runs(out_root) + teacher_runs() + _screen_any(out_root))


def _screen_any(out_root: str) -> list[Run]:
    # The weak teachers are screen runs; their names do not depend on the rates.
    return screen_runs(out_root, chosen_learning_rates(out_root) or
                       {m: LR_GRID[0] for m in METHODS})


def _start(out_root: str, run: Run) -> subprocess.Popen:
    run_dir = os.path.join(out_root, run.name)
    cmd = [sys.executable, "-m", "rslad_tf.train", *run.args, "--out", run_dir]
    out = open(os.path.join(out_root, f"{run.name}.log"), "w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def _eval(run_dir: str, which: str) -> dict | None:
    path = os.path.join(run_dir, f"eval_{which}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _acc(result: dict | None, key: str) -> str:
    if result is None:
        return "-"
    value = result.get(f"{key}_acc")
    return "-" if value is None else f"{float(value):.1f}"


def tables(out_root: str) -> str:
    """The grid's and the screen's tables in Markdown, from the run directories."""
    lines = ["Learning-rate grid (width 8, eps 0.2, seed 0, last epoch, validation split "
             f"of {VALIDATION_FRACTION:g}):", "",
             "| method | " + " | ".join(f"lr {lr:g}" for lr in LR_GRID) + " | chosen |",
             "| --- |" + " --- |" * (len(LR_GRID) + 1)]
    rates = chosen_learning_rates(out_root)
    for method in METHODS:
        cells = []
        for lr in LR_GRID:
            row = _last_row(os.path.join(out_root, f"lr-{method}-lr{lr:g}"))
            cells.append("-" if row is None else
                         f"{float(row['clean_acc']):.1f} / {float(row['pgd20_acc']):.1f}")
        chosen = f"{rates[method]:g}" if rates else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen} |")
    lines += ["", "Cells are validation clean / PGD-20 accuracy (%).", ""]
    lines += ["Screen (seed 0; test set, all 450 points; clean / AutoAttack, last and best "
              "checkpoints):", "",
              "| eps | student width | teacher AA (strong / weak) | SAT last | "
              "RSLAD strong last | RSLAD weak last | SAT best | RSLAD strong best | "
              "RSLAD weak best |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for eps in EPSILONS:
        strong = _eval(os.path.join(out_root, teacher_name("strong", eps)), "last")
        weak = _eval(os.path.join(out_root, teacher_name("weak", eps)), "last")
        teacher_cell = f"{_acc(strong, 'autoattack')} / {_acc(weak, 'autoattack')}"
        for width in WIDTHS:
            names = [f"screen-sat-w{width}-{_eps_tag(eps)}-seed0",
                     f"screen-rslad-strong-w{width}-{_eps_tag(eps)}-seed0",
                     f"screen-rslad-weak-w{width}-{_eps_tag(eps)}-seed0"]
            cells = []
            for which in ("last", "best"):
                for name in names:
                    result = _eval(os.path.join(out_root, name), which)
                    cells.append(f"{_acc(result, 'clean')} / {_acc(result, 'autoattack')}")
            lines.append(f"| {eps:g} | {width} | {teacher_cell} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.embedded_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "table"))
    parser.add_argument("--out", default=os.path.join("runs", "embedded-study"),
                        help="where the run directories live")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs trained at the same time (default 2)")
    args = parser.parse_args(argv)
    if args.workers <= 0:
        raise UserError(f"--workers must be a positive integer, got {args.workers}")
    if args.command == "table":
        print(tables(args.out))
        return 0
    failed = run_all(args.out, args.workers)
    print(tables(args.out))
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
