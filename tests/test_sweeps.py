"""Sweeps of the pipeline: the plan (methods x seeds x grid, stable cell labels, bad keys
refused in one line), the named studies, and the report's per-cell aggregation (mean and
sample standard deviation over seeds, every run kept), older eval JSONs grouped as
before. The compiled graphs and one local run are in tests/test_pipeline.py."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from components.make_report import make_report_fn
from components.plan_sweep import cell_label, parse_grid, parse_seeds, plan_cells_fn
from pipelines import parameters, studies
from pipelines import rslad_pipeline as rp
from rslad_tf.common.errors import UserError, run_cli
from rslad_tf.evaluation import report

GRID = json.dumps([{"model_kwargs.width": 8}, {"model_kwargs.width": 16, "epsilon": 0.3}])


# -- the plan --------------------------------------------------------------------------
def test_plan_is_methods_by_seeds_by_grid():
    cells = plan_cells_fn(["sat", "rslad"], [0, 1, 2], seed=7, grid=GRID, epsilon=0.0)
    assert len(cells) == 2 * 3 * 2
    assert [(c["method"], c["seed"], c["grid_cell"]) for c in cells[:4]] == [
        ("sat", 0, "width=8"), ("sat", 0, "epsilon=0.3,width=16"),
        ("sat", 1, "width=8"), ("sat", 1, "epsilon=0.3,width=16")]
    assert {c["method"] for c in cells[6:]} == {"rslad"}
    # Each cell carries its overrides as JSON and the radius its student is evaluated at.
    assert json.loads(cells[1]["overrides"]) == {"model_kwargs.width": 16, "epsilon": 0.3}
    assert cells[0]["epsilon"] == 0.0 and cells[1]["epsilon"] == 0.3
    # No seeds: the pipeline's seed alone; no grid: one cell without overrides.
    plain = plan_cells_fn(["sat", "rslad"], [], seed=7, grid="")
    assert [(c["method"], c["seed"], c["grid_cell"], c["overrides"]) for c in plain] == [
        ("sat", 7, "", "{}"), ("rslad", 7, "", "{}")]


def test_cell_labels_are_short_and_stable():
    assert cell_label({"model_kwargs.width": 8}) == "width=8"
    assert cell_label({"epsilon": 0.3, "model_kwargs.width": 4}) == \
        cell_label({"model_kwargs.width": 4, "epsilon": 0.3}) == "epsilon=0.3,width=4"
    # Two keys that would read the same keep their prefixes.
    assert cell_label({"model_kwargs.beta": 1, "method_kwargs.beta": 6.0}) == \
        "method_kwargs.beta=6.0,model_kwargs.beta=1"
    assert cell_label({}) == ""
    assert cell_label({"lr_milestones": [10, 20]}) == "lr_milestones=[10, 20]"


@pytest.mark.parametrize("grid,message", [
    ('[{"widht": 8}]', "unknown key 'widht'"),
    ('[{"model_kwarg.width": 8}]', "only model_kwargs.NAME and method_kwargs.NAME"),
    ('[{"seed": 3}]', "not sweepable by the grid (set it with the seeds parameter)"),
    ('[{"method": "sat"}]', "the methods parameter"),
    ('{"epochs": 3}', "a non-empty JSON list"),
    ("[]", "a non-empty JSON list"),
    ("[3]", "is not a JSON object"),
    ("[{", "is not JSON"),
    ('[{"epochs": 3}, {"epochs": 3}]', "listed twice"),
])
def test_bad_grids_are_one_line_errors(grid, message):
    with pytest.raises(UserError, match="^grid: ") as info:
        parse_grid(grid)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_seeds():
    assert parse_seeds([], 5) == [5]
    assert parse_seeds([2.0, 0]) == [2, 0]  # kfp stores list numbers as floats
    for bad in ([-1], ["a"], [1.5], [True], [1, 1]):
        with pytest.raises(UserError, match="seed"):
            parse_seeds(bad)


def _one_error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_run_local_refuses_a_bad_grid_before_running(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(rp.main, ["run-local", "--preset", "digits-tiny", "--grid",
                             '[{"widht": 8}]', "--out", str(out)]) == 2
    assert _one_error_line(capsys).startswith("error: grid: unknown key 'widht'")
    assert run_cli(rp.main, ["run-local", "--seeds", "0,x", "--out", str(out)]) == 2
    assert "--seeds: 'x' is not a non-negative integer" in _one_error_line(capsys)
    assert run_cli(rp.main, ["run-local", "--study", "digits-tiny-sweep", "--preset",
                             "digits", "--out", str(out)]) == 2
    assert "give one" in _one_error_line(capsys)
    assert not out.exists()  # nothing started, nothing written


def test_a_bad_model_argument_in_the_grid_is_one_stderr_line_in_a_real_process(tmp_path):
    # Checking a dotted key imports TensorFlow (the model's arguments are read from its
    # builder): its C++ start-up lines must not join the one error line.
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.rslad_pipeline", "run-local", "--preset",
         "digits-tiny", "--grid", '[{"model_kwargs.wdth": 8}]', "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: grid cell 'wdth=8' (natural): model_kwargs.wdth: small_cnn has no argument "
        "'wdth'; choose one of: width"]
    assert not out.exists()


def test_component_refuses_a_bad_cell_before_reading_data(tmp_path):
    from components.distill_student import distill_student_fn

    with pytest.raises(UserError, match="^grid: unknown key 'widht'"):
        distill_student_fn(str(tmp_path / "no-data"), str(tmp_path / "student"), method="sat",
                           overrides='{"widht": 8}')
    assert not (tmp_path / "student").exists()


def test_submit_and_params_check_seeds_and_grid():
    definitions = {"seeds": {"parameterType": "LIST"}, "grid": {"parameterType": "STRING"}}
    assert parameters.parse_param("seeds=0,1,2", definitions) == ("seeds", [0, 1, 2])
    assert parameters.parse_param("seeds=[3]", definitions) == ("seeds", [3])
    assert parameters.parse_param(f"grid={GRID}", definitions) == ("grid", GRID)
    with pytest.raises(UserError, match="^grid: unknown key 'widht'"):
        parameters.parse_param('grid=[{"widht": 8}]', definitions)
    with pytest.raises(UserError, match="seeds: 'x'"):
        parameters.parse_param("seeds=0,x", definitions)
    # A package compiled without sweeps has no such parameter, and says how to get one.
    with pytest.raises(UserError, match="compiled without sweeps; compile it with"):
        parameters.parse_param("seeds=0,1", {"seed": {"parameterType": "NUMBER_INTEGER"}})


def test_count_steps_of_a_sweep():
    params = rp.study_params("digits-tiny-sweep")
    cells = len(params["methods"]) * len(params["seeds"]) * len(json.loads(params["grid"]))
    assert rp.count_steps(params) == 7 + 4 * cells
    # Without seeds and grid: the count of today's graph.
    assert rp.count_steps(dict(params, seeds=[], grid="")) == 6 + 4 * len(params["methods"])


# -- studies ---------------------------------------------------------------------------
def test_studies_are_valid_parameters():
    for name, study in studies.STUDIES.items():
        params = rp.study_params(name)
        assert rp.is_sweep(params), name
        for key, value in params.items():
            parameters.check_value(key, value)
        assert rp.sweep_cells(params), name
        assert study["description"]
    with pytest.raises(UserError, match="unknown study 'nope'"):
        studies.get("nope")


def test_digits_embedded_study_is_declared_as_the_issue_asks():
    params = rp.study_params("digits-embedded")
    assert params["dataset"] == "digits" and params["methods"] == ["sat", "rslad"]
    assert len(params["seeds"]) == 3
    grid = parse_grid(params["grid"])
    assert sorted({cell["model_kwargs.width"] for cell in grid}) == [4, 8, 16]
    radii = sorted({cell["epsilon"] for cell in grid})
    assert radii[0] == 0.2 and len(radii) == 2 and radii[1] > 0.2
    assert params["eval_n_examples"] == 0  # every test point


def test_study_fills_the_parameters_and_options_win():
    params = rp.study_params("digits-tiny-sweep", {"epochs": 3, "seeds": None})
    assert params["epochs"] == 3 and params["seeds"] == [0, 1]
    assert params["max_steps"] == rp.LOCAL_PRESETS["digits-tiny"]["max_steps"]


# -- the report ------------------------------------------------------------------------
def _eval(method, seed, cell=None, **accs):
    record = {"dataset": "digits", "model": "small_cnn(width=8)", "method": method,
              "checkpoint": "best", "eps": 0.2, "n_examples": 16, "train_seed": seed,
              "attacks": {}, "seconds": {}, **accs}
    if cell is not None:
        record["grid_cell"] = cell
    return record


def _sweep_evals():
    evals = []
    for i, (method, cell) in enumerate([("sat", "width=8"), ("sat", "epochs=3,width=8"),
                                        ("rslad", "width=8")]):
        for seed in (0, 1, 2):
            evals.append(_eval(method, seed, cell, clean_acc=70.0 + 3 * i + seed ** 2,
                               autoattack_acc=40.0 + i - 1.5 * seed))
    return evals


def test_report_aggregates_per_cell_with_the_sample_std_over_seeds():
    evals = _sweep_evals()
    rows = report.build_table(evals)
    assert len(rows) == 3
    for row in rows:
        members = [e for e in evals
                   if (e["method"], e["grid_cell"]) == (row["method"], row["grid_cell"])]
        assert row["n_runs"] == len(members) == 3 and row["train_seeds"] == [0, 1, 2]
        for label, key in (("Clean", "clean_acc"), ("AA", "autoattack_acc")):
            values = [e[key] for e in members]
            assert row["columns"][label]["mean"] == pytest.approx(statistics.mean(values))
            assert row["columns"][label]["std"] == pytest.approx(statistics.stdev(values))
        # Every run's numbers are kept, in seed order.
        assert [run["train_seed"] for run in row["runs"]] == [0, 1, 2]
        assert [run["columns"]["Clean"] for run in row["runs"]] == \
            [e["clean_acc"] for e in members]
    text = report.render(rows, "md")
    assert "| Cell | Method |" in text.splitlines()[0]
    assert any("| epochs=3,width=8 | sat | best |" in line for line in text.splitlines())
    table = report.render(rows, "csv").splitlines()
    assert table[0].startswith("source,dataset,model,grid_cell,method,")
    runs = report.render_runs(rows).splitlines()
    assert len(runs) == 2 + len(evals)
    assert "| Seed |" in runs[0]


def test_older_eval_jsons_group_as_before():
    old = [_eval("sat", seed, clean_acc=80.0 + seed) for seed in (0, 1)]
    old.append(_eval("rslad", 0, clean_acc=75.0))
    rows = report.build_table(old)
    assert [(r["method"], r["n_runs"], r["grid_cell"]) for r in rows] == \
        [("sat", 2, None), ("rslad", 1, None)]
    assert rows[0]["columns"]["Clean"]["std"] == pytest.approx(statistics.stdev([80.0, 81.0]))
    header = report.render(rows, "md").splitlines()[0]
    assert "Cell" not in header
    assert "grid_cell" not in report.render(rows, "csv").splitlines()[0]
    # Mixed with sweep evals, an older file is a row of its own (no cell).
    mixed = report.build_table(old + _sweep_evals())
    assert sum(1 for r in mixed if r["grid_cell"] is None) == 2


def test_make_report_keeps_seeds_apart_and_lists_every_run(tmp_path):
    white, black = [], []
    for i, ev in enumerate(_sweep_evals()):
        path = tmp_path / f"white{i}.json"
        path.write_text(json.dumps(ev))
        white.append(str(path))
        blackbox = {k: ev[k] for k in ("dataset", "model", "method", "checkpoint", "eps",
                                       "train_seed", "grid_cell")}
        blackbox.update(square_acc=ev["autoattack_acc"] + 5.0)
        path = tmp_path / f"black{i}.json"
        path.write_text(json.dumps(blackbox))
        black.append(str(path))
    out = [str(tmp_path / name) for name in ("report.md", "table.json", "plot.png")]
    rows = make_report_fn(white, black, *out, log=lambda *a, **k: None)
    assert [r["n_runs"] for r in rows] == [3, 3, 3]
    sat = next(r for r in rows if r["grid_cell"] == "width=8" and r["method"] == "sat")
    squares = [e["autoattack_acc"] + 5.0 for e in _sweep_evals()
               if (e["method"], e["grid_cell"]) == ("sat", "width=8")]
    assert sat["columns"]["Square"]["std"] == pytest.approx(statistics.stdev(squares))
    with open(out[0]) as f:
        text = f.read()
    assert "## Every run" in text and "- sweep: training seeds 0, 1, 2" in text
    every_run = text.split("## Every run", 1)[1]
    assert sum(1 for line in every_run.splitlines() if "| best |" in line) == 9


def test_submit_a_study_dry_run(capsys):
    """The study's values are sent, under the --param given; a bad grid key stops submit in
    one line before any request."""
    assert run_cli(rp.main, ["submit", "--host", "http://127.0.0.1:9", "--dry-run",
                             "--study", "digits-tiny-sweep", "--param", "epochs=2"]) == 0
    out = capsys.readouterr().out
    sent = json.loads(out.split("runtime_config.parameters: ", 1)[1].splitlines()[0])
    study = studies.STUDIES["digits-tiny-sweep"]["params"]
    assert sent["seeds"] == study["seeds"] and sent["grid"] == study["grid"]
    assert sent["epochs"] == 2
    assert run_cli(rp.main, ["submit", "--host", "http://127.0.0.1:9", "--dry-run",
                             "--param", 'grid=[{"widht": 3}]']) == 2
    assert _one_error_line(capsys).startswith("error: grid: unknown key 'widht'")


def test_submit_applies_every_cell_before_sending(capsys):
    """An argument the student model does not take passes the key check and is refused
    by applying the cell to its preset, before any request."""
    assert run_cli(rp.main, ["submit", "--host", "http://127.0.0.1:9", "--dry-run",
                             "--param", "methods=sat", "--param",
                             'grid=[{"model_kwargs.wdth": 3}]']) == 2
    err = capsys.readouterr().err
    assert "error: grid cell 'wdth=3' (sat): model_kwargs.wdth: small_cnn has no argument " \
           "'wdth'" in err
    assert "POST" not in capsys.readouterr().out
