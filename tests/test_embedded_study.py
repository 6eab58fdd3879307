"""`pipelines.embedded_study`: the study's runs, their order and dependencies, the
learning-rate choice and the tables, with a stand-in trainer that writes what a finished
run leaves (the real trainer is tested in test_train_cli.py)."""

import csv
import json
import os

import pytest

from pipelines import embedded_study as study


class FakeRun:
    """Finishes at once, writing what `python -m rslad_tf.train` (a complete history and
    the last checkpoint) or `python -m rslad_tf.evaluate` (the eval JSON) would."""

    def __init__(self, out_root, run, pgd, fail):
        self.returncode = 1 if fail else 0
        if fail:
            return
        run_dir = os.path.join(out_root, run.name)
        if run.evaluates:
            assert os.path.isfile(os.path.join(run_dir, "checkpoints", "last.keras"))
            with open(os.path.join(run_dir, f"eval_{run.evaluates}.json"), "w") as f:
                json.dump({"clean_acc": 91.0, "autoattack_acc": pgd,
                           "params": 100 * len(run.name)}, f)
            return
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({"preset": run.args[1]}, f)
        with open(os.path.join(run_dir, "history.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, ["epoch", "clean_acc", "pgd20_acc"])
            writer.writeheader()
            for epoch in range(study.EPOCHS):
                writer.writerow({"epoch": epoch, "clean_acc": 90.0, "pgd20_acc": pgd})
        if not run.validation:
            for which in ("best", "last"):
                open(os.path.join(run_dir, "checkpoints", f"{which}.keras"), "w").close()

    def poll(self):
        return self.returncode


@pytest.fixture
def fake_trainer(monkeypatch):
    started, scores, failing = [], {}, set()

    def start(out_root, run):
        started.append(run)
        return FakeRun(out_root, run, scores.get(run.name, 50.0), run.job in failing)

    monkeypatch.setattr(study, "_start", start)
    monkeypatch.setattr(study, "_dirs_in_use", lambda out_root: set())
    monkeypatch.setattr(study.time, "sleep", lambda s: None)
    return started, scores, failing


def test_every_run_of_the_protocol_in_dependency_order(tmp_path, fake_trainer):
    started, scores, _ = fake_trainer
    scores.update({"lr-sat-lr0.15": 60.0, "lr-rslad-lr0.05": 55.0, "lr-rslad-lr0.5": 55.0,
                   # each radius has its own grid: at eps 0.3 SAT takes 0.5, RSLAD 0.15
                   "lr-sat-eps0.3-lr0.5": 60.0, "lr-rslad-eps0.3-lr0.15": 60.0,
                   # natural training is chosen by clean accuracy (90 at every rate:
                   # the smallest), not by PGD-20 (which would choose 0.5)
                   "lr-natural-lr0.05": 0.0, "lr-natural-lr0.15": 0.0,
                   # eps 0.3: the strong teacher 30 points above SAT (clean 91% < 95%), so
                   # those cells match the paper's conditions; eps 0.2's do not (50 = 50).
                   "teacher-w64-eps0.3": 80.0})
    assert study.run_all(str(tmp_path), workers=2, log=lambda m: None) == 0
    jobs = [r.job for r in started]
    trained = [r.name for r in started if not r.evaluates]
    # 2 teachers, 2 radii x 2 methods x 3 grid runs, 6 other methods x 3 at eps 0.2, 3
    # widths x 2 radii x 3 variants x (1 + 2 seeds), and the same 54 again in the
    # replication; every run but the grid's evaluated at its last and its best checkpoint.
    assert len(trained) == len(set(trained)) == 2 + 12 + 18 + 18 + 36 + 54
    assert len(jobs) == len(set(jobs)) == len(trained) + 2 * (2 + 18 + 36 + 54)
    assert jobs[0] == "teacher-w64-eps0.2"
    for run in started:  # nothing starts before the training runs it needs
        for need in run.needs:
            assert trained.index(need) < trained.index(run.name) or run.evaluates
            assert jobs.index(need) < jobs.index(run.job), (run.job, need)
    grid_end = max(jobs.index(n) for n in jobs if n.startswith("lr-"))
    assert all(jobs.index(n) > grid_end for n in jobs if n.startswith("screen-"))
    # Last checkpoints are evaluated before the best ones, SAT's before RSLAD's; the
    # replication comes after all of the first study, each of its runs evaluated at both
    # checkpoints before the next cell starts.
    first_best = min(i for i, j in enumerate(jobs) if j.endswith(":eval-best"))
    first_rep = min(i for i, j in enumerate(jobs) if j.startswith("rep-"))
    assert all(i < first_best for i, j in enumerate(jobs)
               if j.endswith(":eval-last") and not j.startswith("rep-"))
    assert all(i < first_rep for i, j in enumerate(jobs) if not j.startswith("rep-"))
    rep = [n for n in trained if n.startswith("rep-")]
    assert rep[0] == "rep-sat-w4-eps0.2-seed0" and len(rep) == 54
    assert all("eps0.2" in n for n in rep[:27]) and all("eps0.3" in n for n in rep[27:])
    assert jobs.index("rep-sat-w4-eps0.2-seed0:eval-best") < \
        jobs.index("rep-sat-w8-eps0.2-seed0")
    # The screen goes cell by cell: a run's evaluation comes before the next cell starts.
    assert jobs.index("screen-sat-w4-eps0.2-seed0:eval-last") < \
        jobs.index("screen-sat-w8-eps0.2-seed0")
    # The decision stage starts once the screen's conditions can be read, the matching
    # cells first.
    conditions_read = max(jobs.index(f"{n}:eval-last") for n in jobs
                          if n.startswith(("screen-sat-", "teacher-")) and n.endswith(
                              ("seed0", "eps0.2", "eps0.3")))
    decision = [n for n in trained if n.startswith("screen-") and not n.endswith("seed0")]
    assert min(jobs.index(n) for n in decision) > conditions_read
    assert all("eps0.3" in n for n in decision[:18]) and "eps0.2" in decision[18]
    assert study.matches_paper(str(tmp_path), 0.3, 8) is True
    assert study.matches_paper(str(tmp_path), 0.2, 8) is False
    # The grid's choice: highest validation PGD-20, the smaller rate on a tie.
    assert study.chosen_learning_rates(str(tmp_path), 0.2) == {"sat": 0.15, "rslad": 0.05}
    assert study.chosen_learning_rates(str(tmp_path), 0.3) == {"sat": 0.5, "rslad": 0.15}
    by_name = {r.name: r for r in started if not r.evaluates}
    # Away from eps 0.2 a run's name carries its rate.
    sat = by_name["screen-sat-w4-eps0.3-lr0.5-seed2"].args
    assert "learning_rate=0.5" in sat and "--epsilon" in sat and "0.3" in sat
    assert sat[sat.index("--seed") + 1] == "2"
    assert "learning_rate=0.15" in by_name["screen-sat-w4-eps0.2-seed0"].args
    weak = by_name["screen-rslad-weak-w8-eps0.3-lr0.15-seed1"].args
    assert os.path.join(str(tmp_path), "screen-sat-w16-eps0.3-lr0.5-seed0", "checkpoints",
                        "last.keras") in weak and "learning_rate=0.15" in weak
    # The replication repeats a run's arguments exactly, teacher included.
    assert by_name["rep-rslad-weak-w8-eps0.3-lr0.15-seed1"].args == weak
    assert by_name["rep-rslad-weak-w8-eps0.3-lr0.15-seed1"].needs == (
        "screen-sat-w16-eps0.3-lr0.5-seed0",)
    grid = by_name["lr-rslad-lr0.5"].args
    assert "validation_fraction=0.2" in grid and "--no-final-eval" in grid
    grid = by_name["lr-rslad-eps0.3-lr0.05"].args
    assert "0.3" in grid and os.path.join(str(tmp_path), "teacher-w64-eps0.3", "checkpoints",
                                          "last.keras") in grid
    assert by_name["lr-rslad-eps0.3-lr0.05"].needs == ("teacher-w64-eps0.3",)
    assert "--no-final-eval" in sat  # evaluations are jobs of their own
    assert not any("validation_fraction" in a for a in sat)
    # A second run finds everything finished and starts nothing.
    started.clear()
    assert study.run_all(str(tmp_path), workers=2, log=lambda m: None) == 0
    assert started == []
    table = study.tables(str(tmp_path))
    assert "| 0.2 | sat | 90.0 / 50.0 | 90.0 / 60.0 | 90.0 / 50.0 | 0.15 |" in table
    assert "| 0.3 | rslad | 90.0 / 50.0 | 90.0 / 60.0 | 90.0 / 50.0 | 0.15 |" in table
    # The other methods' grid, at eps 0.2 only; natural training by clean accuracy.
    assert "| 0.2 | iad | 90.0 / 50.0 | 90.0 / 50.0 | 90.0 / 50.0 | 0.05 |" in table
    assert "| 0.3 | iad |" not in table
    assert study.chosen_learning_rates(str(tmp_path), 0.2, ("natural",)) == {"natural": 0.05}
    assert ("| 0.3 | 16 | yes | 80.0 / 50.0 | 3/3/3 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 "
            "| 91.0 ± 0.0 | +0.0: no clear difference |") in table
    assert "| screen-rslad-weak-w4-eps0.2-seed2 | 91.0 / 50.0 | 91.0 / 50.0 | 1 |" in table
    assert "| rep-rslad-weak-w4-eps0.2-seed2 | 91.0 / 50.0 | 91.0 / 50.0 | 1 |" in table
    assert ("| 0.3 | 16 | 3/3/3 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | +0.0: no clear "
            "difference | +0.0: no clear difference | 3/3/3 | 50.0 ± 0.0 |") in table
    assert "first eps-0.3 screen" not in table


def test_the_first_eps03_screen_is_reported_apart_and_not_rerun(tmp_path, fake_trainer):
    """Amendment 2: the eps-0.3 runs made at the eps-0.2 rates (names without a rate)
    stay in the tables, in a block of their own, and the driver trains the eps-0.3 cells
    anew under names with their rate."""
    started, _, _ = fake_trainer
    root = str(tmp_path)
    assert study.run_all(root, workers=2, log=lambda m: None) == 0
    old = study.first_eps03_runs()
    assert len(old) == 9 and not any(r.name in old for r in started)
    for name in old:  # what the first attempt left: a finished, evaluated run
        study._start(root, study.Run(name, ("--preset", "digits-sat")))
        os.makedirs(os.path.join(root, name, "checkpoints"), exist_ok=True)
        with open(os.path.join(root, name, "eval_last.json"), "w") as f:
            json.dump({"clean_acc": 10.2, "autoattack_acc": 10.2, "params": 1}, f)
    table = study.tables(root)
    first = table.split("first eps-0.3 screen")[1]
    assert "| screen-sat-w4-eps0.3-seed0 | 10.2 / 10.2 |" in first
    assert "screen-sat-w4-eps0.3-seed0 |" not in table.split("first eps-0.3 screen")[0]
    # The cells read the new runs only.
    assert "| 0.3 | 4 | no | 50.0 / 50.0 | 3/3/3 | 50.0 ± 0.0 |" in table
    started.clear()
    assert study.run_all(root, workers=2, log=lambda m: None) == 0 and started == []


def test_verdict_follows_the_stated_rule():
    assert study.verdict([60.0, 62.0, 61.0], [55.0, 56.0, 54.0]) == "+6.0: RSLAD better"
    assert study.verdict([50.0, 51.0, 52.0], [55.0, 56.0, 54.0]) == "-4.0: RSLAD worse"
    # 2 points apart with a spread of 2: within twice the larger std.
    assert study.verdict([53.0, 57.0, 55.0], [52.0, 54.0, 53.0]) == \
        "+2.0: no clear difference"
    assert study.verdict([60.0], [50.0]) == "one seed"


def test_a_failed_run_stops_only_what_needs_it(tmp_path, fake_trainer):
    started, _, failing = fake_trainer
    failing.add("teacher-w64-eps0.2")
    messages = []
    left = study.run_all(str(tmp_path), workers=1, log=messages.append)
    names = [r.name for r in started]
    assert "lr-sat-lr0.5" in names and "teacher-w64-eps0.3" in names
    assert not any(n.startswith("lr-rslad-lr") for n in names)
    # The other radius goes on: its own teacher, grid, screen and decision stage.
    assert "lr-rslad-eps0.3-lr0.5" in names and "screen-sat-w4-eps0.3-lr0.05-seed2" in names
    assert not any("eps0.2" in n for n in names if n.startswith("screen-"))
    # The teacher, the grids of the five distillation methods, and the teacher's two
    # evaluations.
    assert left == 1 + 5 * 3 + 2
    assert "lr-natural-lr0.5" in names and "lr-trades-lr0.5" in names
    assert "not run: teacher-w64-eps0.2:eval-best (needs teacher-w64-eps0.2)" in messages
    assert "FAILED (exit 1) teacher-w64-eps0.2 in 0 s" in messages
    assert any(m.startswith("not run: lr-rslad-lr0.05 (needs teacher-w64-eps0.2)")
               for m in messages)


def test_a_run_directory_another_process_writes_is_left_to_it(tmp_path):
    """A restarted study must not start a job whose directory a live process (say the
    trainer started before the restart) is still writing."""
    import subprocess
    import sys

    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "--out", str(root / "teacher-w64-eps0.2")])
    try:
        # Until the child has exec'd, /proc shows the parent's command line: wait for it.
        import time

        deadline = time.time() + 30
        while "teacher-w64-eps0.2" not in study._dirs_in_use(str(root)):
            assert time.time() < deadline, "the live writer was never seen"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert "teacher-w64-eps0.2" not in study._dirs_in_use(str(root))


def test_a_job_running_elsewhere_takes_a_worker(tmp_path, fake_trainer, monkeypatch):
    """A restarted study counts the jobs that a live process still runs against
    ``--workers``: with one worker and the first teacher running elsewhere, nothing else
    starts until that process is gone."""
    started, _, _ = fake_trainer
    polls = []

    def busy(out_root):
        polls.append(len(started))
        return {"teacher-w64-eps0.2"} if len(polls) <= 3 else set()

    monkeypatch.setattr(study, "_dirs_in_use", busy)
    assert study.run_all(str(tmp_path), workers=1, log=lambda m: None) == 0
    assert polls[:4] == [0, 0, 0, 0]
    assert started[0].name == "teacher-w64-eps0.2"


def test_digits_presets_are_the_runs_the_driver_trains():
    """The digits presets are the study's runs: the driver's eps-0.2, seed-0 runs at the
    presets' student width and rates resolve to the same experiment as `digits-sat` and
    `digits-rslad`, its strong teacher to `digits-teacher` (apart from the preset name and
    where the teacher comes from); and every preset's rate is the one the grid in the
    repository's record chose by the stated rule."""
    from rslad_tf.config import presets
    from rslad_tf.training import cli

    rates = presets.DIGITS_LEARNING_RATES
    assert set(rates) == set(presets.METHOD_NAMES)
    width = presets.DIGITS_STUDENT_WIDTH
    assert width in study.WIDTHS
    runs = {r.name: r for r in study.screen_runs("/runs", {0.2: rates})
            + study.teacher_runs()}
    for preset, name in (("digits-sat", f"screen-sat-w{width}-eps0.2-seed0"),
                         ("digits-rslad", f"screen-rslad-strong-w{width}-eps0.2-seed0"),
                         ("digits-teacher", "teacher-w64-eps0.2")):
        args = cli.build_parser().parse_args([*runs[name].args, "--out", "/runs/x"])
        resolved = cli.resolve_config(args).experiment()
        expected = presets.get(preset).experiment()
        for key in ("preset", "teacher_preset", "teacher_hint"):
            resolved.pop(key), expected.pop(key)
        assert resolved == expected, preset
    record = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "study_runs")
    methods = study.grid_methods(study.FIRST_EPSILON)
    assert set(methods) == set(rates)
    assert study.chosen_learning_rates(record, study.FIRST_EPSILON, methods) == rates


def test_collect_copies_the_records_that_the_tables_read(tmp_path, fake_trainer):
    """The record in the repository (no checkpoints) gives the same tables as the runs,
    and collecting again keeps what is there."""
    runs, record = str(tmp_path / "runs"), str(tmp_path / "record")
    assert study.run_all(runs, workers=2, log=lambda m: None) == 0
    copied = study.collect(runs, record)
    # The grid: config + history; the rest: all four; the 4 teachers' checkpoints, and
    # both checkpoints of each of the replication's 54 runs.
    assert copied == 30 * 2 + (56 + 54) * 4 + 4 + 54 * 2
    kept = sorted(os.path.relpath(os.path.join(d, f), record)
                  for d, _, files in os.walk(record) for f in files if f.endswith(".keras"))
    assert kept == sorted([os.path.join(n, "checkpoints", "last.keras") for n in (
        "teacher-w64-eps0.2", "teacher-w64-eps0.3", "screen-sat-w16-eps0.2-seed0",
        "screen-sat-w16-eps0.3-lr0.05-seed0")] + [
        os.path.join(n, "checkpoints", f"{which}.keras") for n in os.listdir(record)
        if n.startswith("rep-") for which in ("best", "last")])
    assert len(kept) == 4 + 54 * 2
    assert study.tables(record) == study.tables(runs)
    assert study.collect(runs, record) == 0
    partial = os.path.join(runs, "screen-sat-w4-eps0.2-seed7")  # a run still training
    os.makedirs(partial)
    open(os.path.join(partial, "config.json"), "w").close()
    assert study.collect(runs, record) == 0
    # The record is a study that is finished: continuing it starts nothing.
    started, _, _ = fake_trainer
    started.clear()
    assert study.run_all(record, workers=2, log=lambda m: None) == 0
    assert started == []


def test_a_run_stopped_part_way_is_resumed(tmp_path, monkeypatch):
    """The real `_start`: a run directory that holds a configuration but an incomplete
    history (the study was stopped) is continued with --resume, not refused."""
    import subprocess

    commands = []
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: commands.append(cmd))
    run = study.teacher_runs()[0]
    study._start(str(tmp_path), run)
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "config.json").write_text("{}")
    study._start(str(tmp_path), run)
    assert "--resume" not in commands[0] and commands[1][-1] == "--resume"
    assert commands[1][:-1] == commands[0]


def test_plot_of_accuracy_against_size_is_written_once(tmp_path, fake_trainer):
    from rslad_tf.common.errors import UserError

    runs = str(tmp_path / "runs")
    assert study.run_all(runs, workers=2, log=lambda m: None) == 0
    png = tmp_path / "aa_vs_size.png"
    study.plot(runs, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # One row of panels per stage and checkpoint with results: the first study's last
    # checkpoints, the replication's last and best (4 inches at 120 dpi each).
    height = int.from_bytes(png.read_bytes()[20:24], "big")
    assert height == 3 * 4 * 120
    before = png.read_bytes()
    with pytest.raises(UserError, match="already exists; choose another --png"):
        study.plot(runs, str(png))
    assert png.read_bytes() == before
