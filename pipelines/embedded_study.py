"""The embedded study of issue 12 on one machine: when do robust soft labels help a small
student? (protocol and results: docs/study.md)

    python -m pipelines.embedded_study run [--out runs/embedded-study] [--workers 2]
    python -m pipelines.embedded_study table [--out runs/embedded-study]
    python -m pipelines.embedded_study collect [--out runs/embedded-study] [--to DIR]
    python -m pipelines.embedded_study plot [--out runs/embedded-study] [--png FILE]

``run`` runs every job of the protocol that is not finished yet, ``--workers`` at a time,
each as its own process: training runs (``python -m rslad_tf.train``; finished when the
history has every epoch and the last checkpoint exists) and evaluations of their
checkpoints (``python -m rslad_tf.evaluate``; finished when the eval JSON exists), in the
order the protocol's dependencies allow: the learning-rate grid on the validation split,
the teachers, then the screen and the decision stage (`all_runs`). A training run that
was stopped part-way (the study interrupted) continues with ``--resume``; one that failed
is reported and its directory left for inspection, never overwritten.
``table`` prints the learning-rate grid, the cells and every run in Markdown from the
run directories, the tables docs/study.md shows. ``collect`` copies every run's record
(configuration, history, eval JSONs; of the checkpoints only the four teachers') into
``--to``, by default the repository's docs/study_runs, from which ``table --out
docs/study_runs`` prints the same tables on a fresh clone and ``run --out
docs/study_runs`` continues the study with the same teachers.

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
import statistics
import subprocess
import sys
import time

from rslad_tf.common.errors import UserError, run_cli
from rslad_tf.common.vocabulary import DISTILLATION_METHODS, TEACHER_CACHE_METHODS
from rslad_tf.config import presets

# The stated budget rule and the grid live with the presets they produced
# (`rslad_tf.config.presets`, "The embedded study's budget"): every method, student and
# teacher trains for the same number of epochs with the same step schedule.
EPOCHS = presets.DIGITS_EPOCHS
MILESTONES = presets.DIGITS_MILESTONES
WIDTHS = (4, 8, 16)
EPSILONS = (0.2, 0.3)
TEACHER_WIDTH = presets.DIGITS_TEACHER_WIDTH
TEACHER_LR = presets.DIGITS_TEACHER_LEARNING_RATE   # teachers are not tuned
WEAK_TEACHER_WIDTH = 16    # the weak teacher is the SAT student of this width
LR_GRID = presets.DIGITS_LR_GRID
LR_WIDTH, LR_SEED = 8, 0
# The radius the first grid ran at. Amendment 2 (docs/study.md, made after the eps-0.3
# screen had collapsed at the eps-0.2 rates) repeats the grid at every radius; the runs
# made before it keep their names, which carry no rate (`lr_run_name`, `run_name`).
FIRST_EPSILON = 0.2
VALIDATION_FRACTION = 0.2
SCREEN_SEEDS = (0,)
DECISION_SEEDS = (1, 2)    # with the screen's seed 0: three seeds per decided cell
ALL_SEEDS = (*SCREEN_SEEDS, *DECISION_SEEDS)
TEACHER_MARGIN = 5.0       # points of AutoAttack accuracy (docs/study.md)
SATURATED_CLEAN = 95.0     # clean accuracy (%) from which a student counts as saturated
METHODS = ("sat", "rslad")
# The digits presets' other methods get their rates from the same grid and rule at the
# first radius (issue 12, item 2), though the study itself compares SAT and RSLAD only.
# Natural training is chosen by validation clean accuracy: it is not trained for
# robustness, so its PGD-20 accuracy is near zero at every rate.
OTHER_GRID_METHODS = ("natural", "trades", "ard", "iad", "adaad", "adaiad")


@dataclasses.dataclass(frozen=True)
class Run:
    """One job of the study: a training run (its directory name, the trainer's arguments)
    or, with ``evaluates`` set to "last" or "best", the evaluation of that checkpoint of
    the training run ``name``; and the jobs it needs first."""
    name: str
    args: tuple = ()
    needs: tuple = ()
    validation: bool = False
    evaluates: str | None = None

    @property
    def job(self) -> str:
        return f"{self.name}:eval-{self.evaluates}" if self.evaluates else self.name


def _eps_tag(eps: float) -> str:
    return f"eps{eps:g}"


def teacher_name(strength: str, eps: float, rates: dict | None = None) -> str:
    """Directory of the strong teacher, or of the SAT student (at ``rates``, that radius's
    learning rates) that serves as weak one."""
    if strength == "strong":
        return f"teacher-w{TEACHER_WIDTH}-{_eps_tag(eps)}"
    return run_name("sat", WEAK_TEACHER_WIDTH, eps, 0, rates)


def _common(eps: float, seed: int) -> tuple:
    return ("--epochs", str(EPOCHS), "--set", f"lr_milestones={list(MILESTONES)}",
            "--epsilon", f"{eps:g}", "--seed", str(seed), "--device-data", "on",
            "--no-final-eval")


def _student(method: str, width: int, eps: float, seed: int, lr: float,
             teacher: str | None, out_root: str) -> tuple:
    args = ("--preset", f"digits-{method}", *_common(eps, seed),
            "--set", f"model_kwargs.width={width}", "--set", f"learning_rate={lr:g}")
    if teacher is not None:
        args += ("--teacher", os.path.join(out_root, teacher, "checkpoints", "last.keras"))
        if method in TEACHER_CACHE_METHODS:
            args += ("--teacher-cache",)
    return args


def lr_run_name(method: str, lr: float, eps: float) -> str:
    """Directory of one grid run; the first grid's (eps 0.2) names carry no radius."""
    radius = "" if eps == FIRST_EPSILON else f"-{_eps_tag(eps)}"
    return f"lr-{method}{radius}-lr{lr:g}"


def grid_methods(eps: float) -> tuple:
    """The methods whose rate the grid at radius ``eps`` chooses."""
    return METHODS + (OTHER_GRID_METHODS if eps == FIRST_EPSILON else ())


def lr_runs(out_root: str, eps: float, methods=METHODS) -> list[Run]:
    """The learning-rate grid at radius ``eps``: each of ``methods`` at each rate on the
    validation split (the distillation methods from that radius's strong teacher)."""
    runs = []
    for method in methods:
        teacher = teacher_name("strong", eps) if method in DISTILLATION_METHODS else None
        for lr in LR_GRID:
            args = _student(method, LR_WIDTH, eps, LR_SEED, lr, teacher, out_root)
            args += ("--set", f"validation_fraction={VALIDATION_FRACTION}",)
            runs.append(Run(lr_run_name(method, lr, eps), args,
                            needs=(teacher,) if teacher else (), validation=True))
    return runs


def teacher_runs() -> list[Run]:
    """The strong teachers: SAT, width 64, at each radius."""
    return [Run(teacher_name("strong", eps),
                ("--preset", "digits-sat", *_common(eps, 0),
                 "--set", f"model_kwargs.width={TEACHER_WIDTH}",
                 "--set", f"learning_rate={TEACHER_LR:g}"))
            for eps in EPSILONS]


def chosen_learning_rates(out_root: str, eps: float,
                          methods=METHODS) -> dict[str, float] | None:
    """Each of ``methods``' rate at radius ``eps`` from that radius's grid (highest final
    validation PGD-20, natural training's highest clean accuracy; the smaller rate on a
    tie); None while the grid of any of them is incomplete."""
    chosen = {}
    for method in methods:
        metric = "clean_acc" if method == "natural" else "pgd20_acc"
        scores = []
        for lr in LR_GRID:
            row = _last_row(os.path.join(out_root, lr_run_name(method, lr, eps)))
            if row is None:
                return None
            scores.append((float(row[metric]), -lr))
        chosen[method] = -max(scores)[1]
    return chosen


def rates_by_radius(out_root: str) -> dict[float, dict[str, float]]:
    """The chosen rates of every radius whose grid has finished."""
    rates = {eps: chosen_learning_rates(out_root, eps) for eps in EPSILONS}
    return {eps: r for eps, r in rates.items() if r is not None}


VARIANTS = ("sat", "rslad-strong", "rslad-weak")  # SAT alone, RSLAD from each teacher


# Amendment 3 (docs/study.md): every student run of the screen and the decision stage
# again, on a later library, from the same teachers, with its checkpoints kept so that the
# best one is evaluated too. Its runs are named with this prefix instead of "screen".
SCREEN, REPLICATION = "screen", "rep"


def run_name(variant: str, width: int, eps: float, seed: int,
             rates: dict[str, float] | None = None, stage: str = SCREEN) -> str:
    """Directory of one student run of ``stage`` (`SCREEN` for the screen and the decision
    stage, `REPLICATION`). Away from `FIRST_EPSILON` the name carries the variant's rate
    (from ``rates``, that radius's): the first eps-0.3 screen, trained at the eps-0.2 rates
    before amendment 2, keeps the names without one (`first_eps03_runs`)."""
    rate = ""
    if eps != FIRST_EPSILON and rates is not None:
        rate = f"-lr{rates[variant.partition('-')[0]]:g}"
    return f"{stage}-{variant}-w{width}-{_eps_tag(eps)}{rate}-seed{seed}"


def cell_runs(out_root: str, rates: dict[str, float], eps: float, width: int,
              seeds, stage: str = SCREEN) -> list[Run]:
    """The runs of one cell (radius, student width) of ``stage`` at that radius's
    ``rates``: every variant at each seed. Both stages distil from the same teachers."""
    runs = []
    for seed in seeds:
        for variant in VARIANTS:
            method, _, strength = variant.partition("-")
            teacher = teacher_name(strength, eps, rates) if strength else None
            runs.append(Run(run_name(variant, width, eps, seed, rates, stage),
                            _student(method, width, eps, seed, rates[method], teacher,
                                     out_root), needs=(teacher,) if teacher else ()))
    return runs


def every_cell_runs(out_root: str, rates: dict[float, dict[str, float]],
                    seeds) -> list[Run]:
    """SAT alone and RSLAD from each teacher, every width of every radius in ``rates``
    (`rates_by_radius`), at ``seeds``."""
    return [run for eps in EPSILONS if eps in rates for width in WIDTHS
            for run in cell_runs(out_root, rates[eps], eps, width, seeds)]


def screen_runs(out_root: str, rates: dict[float, dict[str, float]]) -> list[Run]:
    """The screen: every cell at the screen's seeds."""
    return every_cell_runs(out_root, rates, SCREEN_SEEDS)


def first_eps03_runs() -> list[str]:
    """The first eps-0.3 screen's runs, every method at its eps-0.2 rate (0.5): the SAT
    students collapsed, so amendment 2 replaced them; they stay in the record and the
    tables."""
    return [run_name(variant, width, 0.3, 0) for width in WIDTHS for variant in VARIANTS]


def matches_paper(out_root: str, eps: float, width: int) -> bool | None:
    """The protocol's test on the screen (docs/study.md): the strong teacher's AutoAttack
    accuracy at least `TEACHER_MARGIN` points above the SAT student's, and the SAT
    student's clean accuracy below `SATURATED_CLEAN`. None while either is missing."""
    rates = chosen_learning_rates(out_root, eps)
    if rates is None:
        return None
    teacher = _eval(os.path.join(out_root, teacher_name("strong", eps)), "last")
    sat = _eval(os.path.join(out_root, run_name("sat", width, eps, 0, rates)), "last")
    if teacher is None or sat is None:
        return None
    return (teacher["autoattack_acc"] >= sat["autoattack_acc"] + TEACHER_MARGIN
            and sat["clean_acc"] < SATURATED_CLEAN)


def decision_runs(out_root: str, rates: dict[float, dict[str, float]]) -> list[Run]:
    """The decision stage's extra seeds for every cell whose conditions can be read (its
    radius's grid done, the strong teacher's and the SAT screen student's last
    checkpoints evaluated): the cells that match the paper's conditions first."""
    matches = {(eps, width): matches_paper(out_root, eps, width)
               for eps in EPSILONS for width in WIDTHS}
    cells = sorted((cell for cell, m in matches.items() if m is not None),
                   key=lambda cell: not matches[cell])
    return [run for eps, width in cells
            for run in cell_runs(out_root, rates[eps], eps, width, DECISION_SEEDS)]


def _last_row(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if len(rows) == EPOCHS else None


def is_done(out_root: str, run: Run) -> bool:
    """A training run is done when its history has every epoch and its last checkpoint
    exists; an evaluation when its eval JSON exists."""
    run_dir = os.path.join(out_root, run.name)
    if run.evaluates:
        return os.path.isfile(os.path.join(run_dir, f"eval_{run.evaluates}.json"))
    if _last_row(run_dir) is None:
        return False
    # A collected record (`collect`) keeps no student checkpoints: its evaluation says the
    # run finished.
    return (run.validation or os.path.isfile(os.path.join(run_dir, "eval_last.json"))
            or os.path.isfile(os.path.join(run_dir, "checkpoints", "last.keras")))


def evaluation(run: Run, which: str) -> Run:
    """The job that evaluates checkpoint ``which`` of training run ``run`` (the full
    suite on every test point, `python -m rslad_tf.evaluate`)."""
    return Run(run.name, needs=(run.name,), evaluates=which)


def all_runs(out_root: str) -> list[Run]:
    """Every job of the protocol known so far, in the order they start when ready: each
    radius's strong teacher and its learning-rate grid (RSLAD's waits for the teacher),
    the teachers' evaluations, the screen cell by cell at each radius whose grid is done
    (each run trained, then its last checkpoint evaluated), the decision stage the same
    way, the best checkpoints' evaluations, and last the replication (amendment 3), each
    run followed by the evaluations of its last and its best checkpoint."""
    teachers = teacher_runs()
    jobs = [job for teacher, eps in zip(teachers, EPSILONS)
            for job in (teacher, *lr_runs(out_root, eps))]
    # The other methods' grid after the study's own, before its screen and decision.
    jobs += lr_runs(out_root, FIRST_EPSILON, OTHER_GRID_METHODS)
    jobs += [evaluation(t, "last") for t in teachers]
    rates = rates_by_radius(out_root)
    screen = screen_runs(out_root, rates)
    for run in screen:  # cell by cell, so that whole cells finish first
        jobs += [run, evaluation(run, "last")]
    decision = decision_runs(out_root, rates)
    for run in decision:
        jobs += [run, evaluation(run, "last")]
    jobs += [evaluation(r, "best") for r in (*teachers, *screen, *decision)
             if _has_best(out_root, r)]
    for run in replication_runs(out_root, rates):  # whole cells first, as above
        jobs += [run, evaluation(run, "last"), evaluation(run, "best")]
    return jobs


def replication_runs(out_root: str, rates: dict[float, dict[str, float]]) -> list[Run]:
    """Amendment 3: every cell's runs again at all three seeds, eps 0.2's cells first and
    the narrowest first within a radius (the cell that matched the paper's conditions
    leads), at the radii whose grid has chosen its rates."""
    return [run for eps in EPSILONS if eps in rates for width in WIDTHS
            for run in cell_runs(out_root, rates[eps], eps, width, ALL_SEEDS, REPLICATION)]


def _has_best(out_root: str, run: Run) -> bool:
    """False for a finished run whose best checkpoint is gone (a collected record)."""
    return (not is_done(out_root, run) or
            os.path.isfile(os.path.join(out_root, run.name, "checkpoints", "best.keras")))


def run_all(out_root: str, workers: int, log=print) -> int:
    """Run every unfinished job, at most `workers` at a time, each once the training runs
    it needs are done; returns the number of jobs that failed or could not run. A run
    directory that another process is still writing (a study interrupted and restarted)
    is left to it, and counts as one of the ``workers``."""
    os.makedirs(out_root, exist_ok=True)
    running, failed, tried = {}, set(), set()
    while True:
        for job, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                del running[job]
                ok = proc.returncode == 0
                if not ok:
                    failed.add(job)
                log(f"{'done' if ok else f'FAILED (exit {proc.returncode})'} {job} "
                    f"in {time.time() - start:.0f} s")
        busy = _dirs_in_use(out_root)
        todo = [r for r in all_runs(out_root) if r.job not in tried
                and not is_done(out_root, r)]
        ready = [r for r in todo if r.name not in busy
                 and all(is_done(out_root, Run(n)) for n in r.needs)]
        # A job another process still runs (the study restarted) takes a worker too.
        elsewhere = (busy & {r.name for r in todo}) - {j.split(":")[0] for j in running}
        while ready and len(running) + len(elsewhere) < workers:
            run = ready.pop(0)
            tried.add(run.job)
            running[run.job] = (_start(out_root, run), time.time())
            log(f"start {run.job}")
        if not running and not (busy & {r.name for r in todo}):
            for run in todo:
                log(f"not run: {run.job} (needs {', '.join(run.needs)})")
            return len(failed) + len(todo)
        time.sleep(5)


def _dirs_in_use(out_root: str) -> set[str]:
    """Names of the run directories under ``out_root`` that a live process was started
    to write (``--out DIR`` of a trainer, ``--out DIR/eval_*.json`` of an evaluation)."""
    root = os.path.abspath(out_root)
    names = set()
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else ():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == "--out":
                path = os.path.join(cwd, argv[i + 1])
                rel = os.path.relpath(path, root)
                if not rel.startswith(".."):
                    names.add(rel.split(os.sep)[0])
    return names


def _named_runs(out_root: str, seeds) -> list[Run]:
    """Every cell's runs at ``seeds`` at the radii whose grid has chosen its rates."""
    return every_cell_runs(out_root, rates_by_radius(out_root), seeds)


def _start(out_root: str, run: Run) -> subprocess.Popen:
    run_dir = os.path.join(out_root, run.name)
    if run.evaluates:
        cmd = [sys.executable, "-m", "rslad_tf.evaluate",
               os.path.join(run_dir, "checkpoints", f"{run.evaluates}.keras"),
               "--out", os.path.join(run_dir, f"eval_{run.evaluates}.json")]
        log_path = os.path.join(out_root, f"{run.name}.eval-{run.evaluates}.log")
    else:
        cmd = [sys.executable, "-m", "rslad_tf.train", *run.args, "--out", run_dir]
        if os.path.isfile(os.path.join(run_dir, "config.json")):
            # A run the study was stopped in: it continues from its saved state.
            cmd.append("--resume")
        log_path = os.path.join(out_root, f"{run.name}.log")
    with open(log_path, "a") as out:  # the child keeps its own copy of the descriptor
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


def _grid_table(out_root: str) -> list[str]:
    lines = [f"Learning-rate grid (width {LR_WIDTH}, seed {LR_SEED}, last epoch, validation "
             f"split of {VALIDATION_FRACTION:g}; validation clean / PGD-20 accuracy, %):",
             "", "| eps | method | " + " | ".join(f"lr {lr:g}" for lr in LR_GRID)
             + " | chosen |", "| --- | --- |" + " --- |" * (len(LR_GRID) + 1)]
    for eps in EPSILONS:
        for method in grid_methods(eps):
            rate = chosen_learning_rates(out_root, eps, (method,))
            cells = []
            for lr in LR_GRID:
                row = _last_row(os.path.join(out_root, lr_run_name(method, lr, eps)))
                cells.append("-" if row is None else f"{float(row['clean_acc']):.1f} / "
                             f"{float(row['pgd20_acc']):.1f}")
            chosen = f"{rate[method]:g}" if rate else "-"
            lines.append(f"| {eps:g} | {method} | " + " | ".join(cells) + f" | {chosen} |")
    return lines


def _seeds_of(out_root: str, variant: str, width: int, eps: float, which: str,
              stage: str = SCREEN) -> list:
    """The eval results of one variant in one cell of ``stage``, one per finished seed;
    none while that radius's grid is unfinished."""
    rates = chosen_learning_rates(out_root, eps)
    if rates is None:
        return []
    results = [_eval(os.path.join(out_root, run_name(variant, width, eps, seed, rates,
                                                     stage)), which) for seed in ALL_SEEDS]
    return [r for r in results if r is not None]


def _cell_aa(out_root: str, width: int, eps: float, which: str,
             stage: str = SCREEN) -> dict[str, list[float]]:
    """Each variant's AutoAttack accuracies in one cell of ``stage``, one per evaluated
    seed of checkpoint ``which``."""
    return {v: [r["autoattack_acc"] for r in _seeds_of(out_root, v, width, eps, which, stage)]
            for v in VARIANTS}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return (statistics.mean(values),
            statistics.stdev(values) if len(values) > 1 else None)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def verdict(rslad: list[float], sat: list[float]) -> str:
    """The protocol's reading of one comparison (docs/study.md): the difference of means,
    called clear only beyond twice the larger standard deviation over seeds."""
    if len(rslad) < 2 or len(sat) < 2:
        return "one seed"
    (m_r, s_r), (m_s, s_s) = _mean_std(rslad), _mean_std(sat)
    diff = m_r - m_s
    if abs(diff) > 2 * max(s_r, s_s):
        return f"{diff:+.1f}: RSLAD {'better' if diff > 0 else 'worse'}"
    return f"{diff:+.1f}: no clear difference"


def tables(out_root: str) -> str:
    """The study's tables in Markdown, from the run directories: the learning-rate grid,
    the cells (mean ± sample std over the finished seeds), and every run."""
    lines = _grid_table(out_root)
    lines += ["", "Cells (test set, all 450 points, last checkpoints; AutoAttack accuracy "
              "%, mean ± sample std over the n seeds that finished):", "",
              "| eps | width | matches the paper | teacher AA strong / weak | n | SAT | "
              "RSLAD strong | RSLAD weak | SAT clean | strong - SAT | weak - SAT |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for eps in EPSILONS:
        rates = chosen_learning_rates(out_root, eps)
        strong = _eval(os.path.join(out_root, teacher_name("strong", eps)), "last")
        weak = (_eval(os.path.join(out_root, teacher_name("weak", eps, rates)), "last")
                if rates else None)
        teacher_cell = f"{_acc(strong, 'autoattack')} / {_acc(weak, 'autoattack')}"
        for width in WIDTHS:
            aa = _cell_aa(out_root, width, eps, "last")
            clean = [r["clean_acc"] for r in _seeds_of(out_root, "sat", width, eps, "last")]
            match = matches_paper(out_root, eps, width)
            n = "/".join(str(len(aa[v])) for v in VARIANTS)
            lines.append(
                f"| {eps:g} | {width} | {'-' if match is None else 'yes' if match else 'no'} "
                f"| {teacher_cell} | {n} | {_spread(aa['sat'])} | "
                f"{_spread(aa['rslad-strong'])} | {_spread(aa['rslad-weak'])} | "
                f"{_spread(clean)} | {verdict(aa['rslad-strong'], aa['sat'])} | "
                f"{verdict(aa['rslad-weak'], aa['sat'])} |")
    lines += _replication_table(out_root)
    lines += ["", "Every run (test set, all 450 points; clean / AutoAttack %; the best "
              "checkpoint is chosen by PGD-20 on the first 200 test points):", "",
              "| run | last | best | best epoch |", "| --- | --- | --- | --- |"]
    names = [run.name for run in (*teacher_runs(), *_named_runs(out_root, SCREEN_SEEDS),
                                  *_named_runs(out_root, DECISION_SEEDS))]
    lines += _run_rows(out_root, names)
    replicated = _run_rows(out_root, [r.name for r in replication_runs(
        out_root, rates_by_radius(out_root))])
    if replicated:
        lines += ["", "The replication's runs (amendment 3; same columns):", "",
                  "| run | last | best | best epoch |", "| --- | --- | --- | --- |",
                  *replicated]
    first = _run_rows(out_root, first_eps03_runs())
    if first:
        lines += ["", "The first eps-0.3 screen, every method at its eps-0.2 rate (0.5); "
                  "replaced by amendment 2 (same columns):", "",
                  "| run | last | best | best epoch |", "| --- | --- | --- | --- |", *first]
    return "\n".join(lines)


def _replication_table(out_root: str) -> list[str]:
    """The replication's cells (amendment 3), last and best checkpoints side by side,
    each read by the same rule; nothing before its first evaluation."""
    rows = []
    for eps in EPSILONS:
        for width in WIDTHS:
            row = [f"{eps:g}", str(width)]
            for which in ("last", "best"):
                aa = _cell_aa(out_root, width, eps, which, REPLICATION)
                row += ["/".join(str(len(aa[v])) for v in VARIANTS),
                        *(_spread(aa[v]) for v in VARIANTS),
                        verdict(aa["rslad-strong"], aa["sat"]),
                        verdict(aa["rslad-weak"], aa["sat"])]
            if row[2] != "0/0/0":
                rows.append("| " + " | ".join(row) + " |")
    if not rows:
        return []
    return ["", "The replication (amendment 3; test set, all 450 points; AutoAttack "
            "accuracy %, mean ± sample std over the n seeds evaluated; last checkpoints, "
            "then best ones):", "",
            "| eps | width | n last | SAT | RSLAD strong | RSLAD weak | strong - SAT "
            "| weak - SAT | n best | SAT | RSLAD strong | RSLAD weak | strong - SAT "
            "| weak - SAT |", "|" + " --- |" * 14, *rows]


def _run_rows(out_root: str, names) -> list[str]:
    """One table row per evaluated run of ``names``: last and best clean / AutoAttack."""
    rows = []
    for name in names:
        last = _eval(os.path.join(out_root, name), "last")
        best = _eval(os.path.join(out_root, name), "best")
        if last is not None:
            rows.append(f"| {name} | {_acc(last, 'clean')} / {_acc(last, 'autoattack')} | "
                        f"{_acc(best, 'clean')} / {_acc(best, 'autoattack')} | "
                        f"{_best_epoch(os.path.join(out_root, name))} |")
    return rows


def _best_epoch(run_dir: str) -> str:
    """The epoch (from 1) whose selection PGD-20 was highest (the first on a tie), as the
    trainer picks ``best.keras``."""
    path = os.path.join(run_dir, "history.csv")
    if not os.path.isfile(path):
        return "-"
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("pgd20_acc")]
    if not rows:
        return "-"
    best = max(rows, key=lambda r: (float(r["pgd20_acc"]), -int(r["epoch"])))
    return str(int(best["epoch"]) + 1)


VARIANT_LABELS = {"sat": "SAT alone", "rslad-strong": "RSLAD, strong teacher",
                  "rslad-weak": "RSLAD, weak teacher (SAT width 16)"}


# The plot's rows: (stage, checkpoint, title); a row is drawn when it has any result.
PLOT_ROWS = ((SCREEN, "last", "first study, last checkpoints"),
             (REPLICATION, "last", "replication, last checkpoints"),
             (REPLICATION, "best", "replication, best checkpoints"))


def plot(out_root: str, path: str) -> None:
    """AutoAttack accuracy (mean and sample std over the finished seeds) against the
    student's parameter count: one panel per radius, one row per `PLOT_ROWS` entry that
    has results, one line per variant, and the strong teacher's accuracy as a horizontal
    line; written to ``path`` (PNG), which must not exist yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rslad_tf.common import fileio

    fileio.refuse_existing(path, "--png")
    rows = [row for row in PLOT_ROWS if any(
        _seeds_of(out_root, v, w, eps, row[1], row[0])
        for v in VARIANTS for w in WIDTHS for eps in EPSILONS)] or list(PLOT_ROWS[:1])
    fig, grid = plt.subplots(len(rows), len(EPSILONS), figsize=(5 * len(EPSILONS),
                                                               4 * len(rows)),
                             sharey=True, squeeze=False)
    for axes, (stage, which, title) in zip(grid, rows):
        for ax, eps in zip(axes, EPSILONS):
            _plot_panel(ax, out_root, eps, stage, which)
            ax.set_title(f"digits, eps {eps:g}: {title}", fontsize=9)
        axes[0].set_ylabel(f"AutoAttack accuracy (%), {which} checkpoint")
    grid[0][0].legend(fontsize=8, loc="lower right")  # the eps-0.2 panel has room there
    fig.tight_layout()
    fileio.write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120),
                            suffix=".png")
    plt.close(fig)


def _plot_panel(ax, out_root: str, eps: float, stage: str, which: str) -> None:
    sizes = set()
    for variant in VARIANTS:
        points = []
        for width in WIDTHS:
            results = _seeds_of(out_root, variant, width, eps, which, stage)
            if results:
                mean, std = _mean_std([r["autoattack_acc"] for r in results])
                points.append((results[0]["params"], mean, std or 0.0))
        if points:
            xs, ys, errs = zip(*points)
            sizes.update(xs)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3,
                        label=VARIANT_LABELS[variant])
    teacher = _eval(os.path.join(out_root, teacher_name("strong", eps)), "last")
    if teacher is not None:
        ax.axhline(teacher["autoattack_acc"], color="grey", linestyle="--",
                   label=f"strong teacher ({teacher['params']:,} parameters)")
    ax.set_xscale("log")
    ax.set_xticks(sorted(sizes), [f"{x:,}" for x in sorted(sizes)], minor=False)
    ax.set_xticks([], minor=True)
    ax.set_xlabel("student parameters")
    ax.grid(alpha=0.3)


RECORD_FILES = ("config.json", "history.csv", "eval_last.json", "eval_best.json")
LAST_CHECKPOINT = os.path.join("checkpoints", "last.keras")   # what teachers keep
# The replication keeps both of its students' checkpoints (amendment 3): the first study
# lost its best ones with the machine that trained them.
REPLICATION_CHECKPOINTS = (LAST_CHECKPOINT, os.path.join("checkpoints", "best.keras"))


def collect(out_root: str, to: str) -> int:
    """Copy each run's record (`RECORD_FILES`; of checkpoints the teachers' and the
    replication's, `REPLICATION_CHECKPOINTS`) from
    ``out_root`` into ``to``, where `tables` reads them as from the runs themselves and
    from which ``run --out`` continues the study; files already there are kept (the
    record only grows). Returns the number of files copied."""
    import shutil

    # The teachers' last checkpoints too (about 1.1 MB each for width 64, 0.13 MB for
    # width 16): the decision stage distils from the same teachers.
    teachers = {teacher_name("strong", eps) for eps in EPSILONS}
    teachers |= {teacher_name("weak", eps, rates)
                 for eps, rates in rates_by_radius(out_root).items()}
    copied = 0
    for name in sorted(os.listdir(out_root)):
        src = os.path.join(out_root, name)
        if not os.path.isfile(os.path.join(src, "config.json")) or _last_row(src) is None:
            continue  # not a run, or one still training: `run` finishes it where it is
        records = RECORD_FILES + ((LAST_CHECKPOINT,) if name in teachers else ())
        if name.startswith(REPLICATION + "-"):
            records += REPLICATION_CHECKPOINTS
        for record in records:
            path, dest = os.path.join(src, record), os.path.join(to, name, record)
            if os.path.isfile(path) and not os.path.exists(dest):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copyfile(path, dest)
                copied += 1
    return copied


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.embedded_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "table", "collect", "plot"))
    parser.add_argument("--out", default=os.path.join("runs", "embedded-study"),
                        help="where the run directories live")
    parser.add_argument("--workers", type=int, default=2,
                        help="runs trained at the same time (default 2)")
    parser.add_argument("--to", default=os.path.join("docs", "study_runs"),
                        help="collect: where the runs' records go (default docs/study_runs)")
    parser.add_argument("--png", default=os.path.join("docs", "study_aa_vs_size.png"),
                        help="plot: the PNG to write (never overwritten)")
    args = parser.parse_args(argv)
    if args.command == "plot":
        plot(args.out, args.png)
        print(f"wrote {args.png}")
        return 0
    if args.command == "collect":
        print(f"copied {collect(args.out, args.to)} files to {args.to}")
        return 0
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
