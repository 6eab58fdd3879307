"""The Kubeflow pipeline: it compiles (every component, the parallel fan-out over methods,
the collected report, the accelerator requests, the image), the Dockerfile installs exactly
the pinned requirements, `submit` fails in one line on an unreachable host, and a local run
of a tiny configuration produces a report with one row per method and every column."""

import json
import logging
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from pipelines import rslad_pipeline as rp
from rslad_tf.common.errors import UserError
from rslad_tf.common.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPONENTS = ("prepare-data", "train-teacher", "train-surrogate", "import-teacher",
              "distill-student", "evaluate-whitebox", "evaluate-blackbox", "make-report")
ACCELERATED = ("train-teacher", "train-surrogate", "distill-student", "evaluate-whitebox",
               "evaluate-blackbox")
TRAINING = ("train-teacher", "train-surrogate", "distill-student")
COLUMNS = ("Clean", "FGSM", "PGD_SAT", "PGD_TRADES", "CW_inf", "AA", "PGD-20 transfer",
           "CW_inf transfer", "Square")


def _compile(tmp_path, *args):
    out = str(tmp_path / "rslad.yaml")
    assert run_cli(rp.main, ["compile", "--out", out, *args]) == 0
    with open(out) as f:
        return out, yaml.safe_load(f)


def _all_tasks(spec):
    """Every task of the pipeline (root and sub-DAGs) by name, with its component spec."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("compile"), "--image", "registry.example/rslad-tf:9")


def test_compiled_pipeline_has_every_component(compiled):
    _, spec = compiled
    tasks = _all_tasks(spec)
    for name in COMPONENTS:
        assert name in tasks, name
        assert f"comp-{name}" in spec["components"], name
    executors = spec["deploymentSpec"]["executors"]
    assert {f"exec-{n}" for n in COMPONENTS} <= set(executors)
    for executor in executors.values():
        container = executor["container"]
        # One image, nothing installed at run time.
        assert container["image"] == "registry.example/rslad-tf:9"
        assert "pip install" not in json.dumps(container)


def test_compiled_pipeline_fans_out_over_methods_and_collects(compiled):
    _, spec = compiled
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 1
    iterator = loops[0]["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--methods"
    loop_tasks = spec["components"][loops[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert {"distill-student", "evaluate-whitebox", "evaluate-blackbox"} <= set(loop_tasks)
    report_inputs = spec["components"]["comp-make-report"]["inputDefinitions"]["artifacts"]
    assert report_inputs["whitebox"]["isArtifactList"]
    assert report_inputs["blackbox"]["isArtifactList"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["methods"]["parameterType"] == "LIST"
    # The default fan-out is the paper's six methods; the later ones are allowed by name.
    assert params["methods"]["defaultValue"] == ["natural", "sat", "trades", "ard", "iad", "rslad"]
    typed = {"dataset": "STRING", "student_model": "STRING", "teacher_uri": "STRING",
             "epochs": "NUMBER_INTEGER", "epsilon": "NUMBER_DOUBLE", "attack_steps":
             "NUMBER_INTEGER", "max_steps": "NUMBER_INTEGER", "accelerator_type": "STRING",
             "accelerator_count": "NUMBER_INTEGER", "teacher_sha256": "STRING",
             "teacher_autoattack_record": "STRING",
             "teacher_autoattack_record_sha256": "STRING"}
    for name, kind in typed.items():
        assert params[name]["parameterType"] == kind, name


# The task graph before sweeps existed: compiled without seeds and grid it is unchanged.
TASKS_WITHOUT_SWEEPS = ("prepare-data", "train-teacher", "import-teacher", "train-surrogate",
                        "for-loop-1", "distill-student", "evaluate-whitebox",
                        "evaluate-blackbox", "export-student", "evaluate-whitebox-2",
                        "make-report")


def test_compiled_pipeline_without_sweeps_keeps_its_task_graph(compiled):
    _, spec = compiled
    assert sorted(_all_tasks(spec)) == sorted(TASKS_WITHOUT_SWEEPS)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert "seeds" not in params and "grid" not in params


def test_compiled_sweep_plans_then_fans_out_over_cells(tmp_path):
    from pipelines import studies

    _, spec = _compile(tmp_path, "--study", "digits-tiny-sweep")
    tasks = _all_tasks(spec)
    assert set(tasks) == set(TASKS_WITHOUT_SWEEPS) | {"plan-sweep"}
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    assert len(loops) == 1
    iterator = loops[0]["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--plan-sweep-Output"
    body = spec["components"][loops[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"distill-student", "evaluate-whitebox", "evaluate-blackbox",
                         "export-student"}
    # The student takes its method, seed and overrides from the cell, the evaluations
    # the cell's radius.
    inputs = body["distill-student"]["inputs"]["parameters"]
    for name in ("method", "seed", "overrides", "grid_cell"):
        assert inputs[name]["componentInputParameter"] == iterator["itemInput"], name
        assert f'["{name}"]' in inputs[name]["parameterExpressionSelector"], name
    for name in ("evaluate-whitebox", "evaluate-blackbox", "export-student"):
        selector = body[name]["inputs"]["parameters"]["epsilon"]["parameterExpressionSelector"]
        assert '["epsilon"]' in selector, name
    # The study's values are the compiled defaults.
    study = studies.STUDIES["digits-tiny-sweep"]["params"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert [int(s) for s in params["seeds"]["defaultValue"]] == study["seeds"]
    assert params["grid"]["defaultValue"] == study["grid"]
    assert params["methods"]["defaultValue"] == study["methods"]
    assert params["max_steps"]["defaultValue"] == rp.LOCAL_PRESETS["digits-tiny"]["max_steps"]


def test_compiled_pipeline_requests_accelerators_from_parameters(compiled):
    _, spec = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in ACCELERATED:
        accelerator = executors[f"exec-{name}"]["container"]["resources"]["accelerator"]
        assert "pipelinechannel--accelerator_type" in accelerator["resourceType"], name
        assert "pipelinechannel--accelerator_count" in accelerator["resourceCount"], name
    for name in ("prepare-data", "import-teacher", "make-report"):
        assert "resources" not in executors[f"exec-{name}"]["container"], name
    # Inside the loop the parameters reach the sub-DAG (kfp 2.17 drops a parameter used
    # only by a resource setting; the steps also take it as an input).
    loop = next(c for n, c in spec["components"].items() if n.startswith("comp-for-loop"))
    assert {"pipelinechannel--accelerator_type", "pipelinechannel--accelerator_count"} <= \
        set(loop["inputDefinitions"]["parameters"])


def test_training_steps_never_cached(compiled):
    _, spec = compiled
    tasks = _all_tasks(spec)
    for name in TRAINING:
        assert not tasks[name].get("cachingOptions", {}).get("enableCache", False), name
    assert tasks["evaluate-whitebox"]["cachingOptions"]["enableCache"] is True


def test_compiled_yaml_loads_back(compiled):
    from kfp import components

    path, _ = compiled
    loaded = components.load_component_from_file(path)
    assert loaded.name == rp.PIPELINE_NAME
    assert {"report", "table", "plot"} <= set(loaded.component_spec.outputs)


def test_image_from_environment_and_no_accelerators(tmp_path, monkeypatch):
    monkeypatch.setenv("RSLAD_TF_IMAGE", "example.org/team/rslad:env")
    _, spec = _compile(tmp_path, "--no-accelerators", "--parallelism", "3")
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"example.org/team/rslad:env"}
    assert all("resources" not in e["container"] for e in executors.values())
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 3


def test_compile_bad_output(tmp_path, capsys):
    assert run_cli(rp.main, ["compile", "--out", str(tmp_path / "p.txt")]) == 2
    assert "must end in .yaml" in capsys.readouterr().err
    assert run_cli(rp.main, ["compile", "--out", str(tmp_path / "none" / "p.yaml")]) == 2


# -- the image -------------------------------------------------------------------------
def _requirements(name="requirements.txt"):
    pins = {}
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, sep, version = line.partition("==")
                assert sep, f"{name}: {line!r} is not an exact pin"
                pins[name.lower()] = version
    return pins


def test_dockerfile_installs_exactly_the_pinned_requirements():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    lines = [ln for ln in text.replace("\\\n", " ").splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert any(re.match(r"COPY requirements\.txt", ln) for ln in lines)
    run_lines = " && ".join(ln for ln in lines if ln.startswith("RUN"))
    installs = [cmd.strip() for cmd in re.split(r"&&|;|\bthen\b", run_lines)
                if "pip install" in cmd]
    assert any(re.search(r"pip install -r requirements\.txt$", c) for c in installs)
    assert any(re.search(r"pip install --no-deps \.$", c) for c in installs)
    pins = _requirements()
    dev_pins = _requirements("requirements-dev.txt")  # exact pins too
    assert "torch" in dev_pins and "torch" not in pins  # PyTorch is optional
    for cmd in installs:
        if re.search(r"-r requirements(-dev)?\.txt$", cmd) or "--no-deps ." in cmd:
            continue
        # Anything else may only add TensorFlow's CUDA extra at the pinned version.
        assert "tensorflow[and-cuda]==$(sed -n 's/^tensorflow==//p' requirements.txt)" in cmd, cmd
    assert "tensorflow" in pins and "kfp" in pins
    # The package goes in after the requirements layer and with --no-deps, so the image
    # holds the pinned versions and nothing else.
    assert text.index("requirements.txt") < text.index("COPY rslad_tf")
    for package in ("rslad_tf", "components", "pipelines"):
        assert re.search(rf"COPY {package} ", text), package
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = f.read().split()
    assert ".venv" in ignored and ".git" in ignored


def test_pyproject_installs_the_library_only():
    """components/ and pipelines/ are generic names: the image imports them from its
    repository copy on PYTHONPATH (tests/test_packaging.py builds the wheel)."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert 'include = ["rslad_tf*"]' in text
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        assert "ENV PYTHONPATH=/opt/rslad_tf" in f.read()
    # The pinned versions satisfy the package's own ranges for the pipeline extra.
    assert _requirements()["kfp"].startswith("2.")


# -- submit ----------------------------------------------------------------------------
def test_submit_to_an_unreachable_host_fails_in_one_line():
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.rslad_pipeline", "submit",
                           "--host", "http://127.0.0.1:9"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach the Kubeflow Pipelines API at "
                               "http://127.0.0.1:9")
    assert time.time() - started < 60


def test_submit_bad_host_and_params(capsys):
    assert run_cli(rp.main, ["submit", "--host", "localhost:8080"]) == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
    assert rp.parse_param("methods=[\"rslad\"]") == ("methods", ["rslad"])
    assert rp.parse_param("epochs=3") == ("epochs", 3)
    assert rp.parse_param("dataset=cifar10") == ("dataset", "cifar10")
    assert run_cli(rp.main, ["submit", "--host", "http://127.0.0.1:9", "--param", "x"]) == 2


# -- local runs ------------------------------------------------------------------------
def test_run_local_bad_inputs(tmp_path, capsys):
    assert run_cli(rp.main, ["run-local", "--methods", "rslad,kd", "--out",
                             str(tmp_path / "a")]) == 2
    assert "unknown method 'kd'" in capsys.readouterr().err
    assert run_cli(rp.main, ["run-local", "--epochs", "0", "--out", str(tmp_path / "b")]) == 2
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep").write_text("x")
    assert run_cli(rp.main, ["run-local", "--out", str(occupied)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (occupied / "keep").read_text() == "x"


def _check_report(result, methods):
    with open(result["table"]) as f:
        rows = json.load(f)
    # The teacher's row first (white-box columns only), then the students'.
    teacher, rows = rows[0], rows[1:]
    assert teacher["role"] == "teacher" and teacher["method"] == "teacher (trades)"
    assert teacher["columns"]["AA"] is not None and teacher["params"] > 0
    assert [r["method"] for r in rows] == list(methods)
    for row in rows:
        assert row["dataset"] == "digits" and row["n_runs"] == 1
        for column in COLUMNS:
            stats = row["columns"].get(column)
            assert stats is not None and 0.0 <= stats["mean"] <= 100.0, (row["method"], column)
    with open(result["report"]) as f:
        text = f.read()
    for method in methods:
        assert f"| {method} |" in text
    for column in COLUMNS:
        assert f" {column} |" in text
    with open(result["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _run_tiny(tmp_path, methods):
    params = rp.local_params("digits-tiny", {"methods": list(methods)})
    return rp.run_local(str(tmp_path / "run"), params, threads=1)


def test_run_local_tiny_two_methods(tmp_path):
    """The whole graph on digits, one training step per model, 16 evaluation points, the
    reference AutoAttack and Square with a few iterations: about 2-3 minutes."""
    environment = dict(os.environ)
    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    result = _run_tiny(tmp_path, ("sat", "rslad"))
    assert dict(os.environ) == environment  # the steps' settings do not leak
    # ... nor does the root-logger handler kfp points at the (closed) progress stream: a
    # later logging call would print a "Logging error" traceback.
    assert (root_logger.handlers, root_logger.level) == (handlers, level)
    _check_report(result, ("sat", "rslad"))
    root = result["pipeline_root"]
    # The students' artifacts: model.keras with its record, the run directory beside it.
    infos = []
    for dirpath, _, filenames in os.walk(root):
        if "model.json" in filenames and os.path.basename(dirpath) == "student":
            with open(os.path.join(dirpath, "model.json")) as f:
                infos.append(json.load(f))
            assert os.path.isfile(os.path.join(dirpath, "model.keras"))
            assert os.path.isfile(os.path.join(dirpath, "run", "history.csv"))
    assert sorted(i["method"] for i in infos) == ["rslad", "sat"]
    assert os.path.getsize(result["log"]) > 0
    # Every step's log is free of TensorFlow's start-up lines (rslad_tf.common.quiet).
    with open(result["log"]) as f:
        log = f.read()
    for noise in ("cuInit", "oneDNN custom operations", "Could not find cuda drivers",
                  "absl::InitializeLog"):
        assert noise not in log, noise


@pytest.mark.slow
def test_run_local_tiny_sweep(tmp_path):
    """The sweep graph end to end: one method x 2 seeds x 2 grid cells (student widths) at
    the digits-tiny budget; the report has one row per cell with mean and sample std over
    the two seeds, and every run's numbers. Slow (about 170 s on 2 cores): the sweep's
    planning, cell checks and aggregation have fast tests in tests/test_sweeps.py, and the
    local runner itself is run end to end by `test_run_local_tiny_two_methods`."""
    import statistics

    params = rp.study_params("digits-tiny-sweep")
    assert len(params["methods"]) == 1 and len(params["seeds"]) == 2
    result = rp.run_local(str(tmp_path / "run"), params, threads=1)
    with open(result["table"]) as f:
        rows = json.load(f)
    teacher, rows = rows[0], rows[1:]
    assert teacher["role"] == "teacher"
    assert sorted(r["grid_cell"] for r in rows) == ["width=6", "width=8"]
    for row in rows:
        assert row["method"] == "sat" and row["model"] == f"small_cnn({row['grid_cell']})"
        assert row["n_runs"] == 2 and row["train_seeds"] == [0, 1]
        assert [run["train_seed"] for run in row["runs"]] == [0, 1]
        for column in COLUMNS:
            values = [run["columns"][column] for run in row["runs"]]
            assert None not in values, column
            stats = row["columns"][column]
            assert stats["mean"] == pytest.approx(statistics.mean(values)), column
            assert stats["std"] == pytest.approx(statistics.stdev(values)), column
    with open(result["report"]) as f:
        text = f.read()
    assert "| width=6 | sat | best |" in text and "## Every run" in text
    infos = []
    for dirpath, _, filenames in os.walk(result["pipeline_root"]):
        if "model.json" in filenames and os.path.basename(dirpath) == "student":
            with open(os.path.join(dirpath, "model.json")) as f:
                info = json.load(f)
            infos.append((info["seed"], info["grid_cell"], info["model_kwargs"]["width"]))
    assert sorted(infos) == [(0, "width=6", 6), (0, "width=8", 8), (1, "width=6", 6),
                             (1, "width=8", 8)]


@pytest.mark.slow
def test_run_local_tiny_all_methods(tmp_path):
    methods = ("natural", "sat", "trades", "ard", "iad", "rslad")
    _check_report(_run_tiny(tmp_path, methods), methods)


# -- make demo -------------------------------------------------------------------------
def test_demo_never_overwrites_results(tmp_path):
    from pipelines import demo

    base = tmp_path / "demo_out"
    assert demo.choose_out_dir(str(base)) == str(base)  # absent
    base.mkdir()
    assert demo.choose_out_dir(str(base)) == str(base)  # empty
    (base / "report.md").write_text("earlier results")
    chosen = demo.choose_out_dir(str(base))
    assert os.path.dirname(chosen) == str(base)
    assert os.path.basename(chosen).startswith("run-")
    os.makedirs(chosen)
    assert demo.choose_out_dir(str(base)) != chosen
    assert (base / "report.md").read_text() == "earlier results"
    plan = demo.describe_plan(rp.LOCAL_PRESETS["digits"], 1)
    assert "30 steps" in plan and "SHA-256 f2339e8fe0d7" in plan and "width=4" in plan
    assert "450 test images" in plan and "100 epochs each" in plan


def test_demo_train_teacher_drops_the_shipped_teacher(tmp_path, monkeypatch, capsys):
    """``--train-teacher`` runs the same parameters without the shipped teacher (so the
    pipeline trains ``digits-teacher``) or its recorded AutoAttack; ``--evaluate-teacher``
    keeps the teacher and drops the record; without either the demo passes both pinned
    files."""
    from pipelines import demo

    seen = []

    def fake_run_local(out_dir, params, **kwargs):
        seen.append(dict(params))
        os.makedirs(out_dir, exist_ok=True)
        report = os.path.join(out_dir, "report.md")
        with open(report, "w") as f:
            f.write("| table |\n")
        return {"report": report}

    monkeypatch.setattr(demo, "_pipeline", lambda: (rp.LOCAL_PRESETS, fake_run_local))
    demo.main(["--out", str(tmp_path / "a")])
    demo.main(["--out", str(tmp_path / "b"), "--train-teacher"])
    demo.main(["--out", str(tmp_path / "c"), "--evaluate-teacher"])
    demo.main(["--out", str(tmp_path / "d"), "--methods", "sat,rslad"])
    with pytest.raises(UserError, match="unknown method 'kd'"):
        demo.main(["--out", str(tmp_path / "e"), "--methods", "sat,kd"])
    shipped, trained, evaluated, two = seen
    assert two["methods"] == ["sat", "rslad"] and "methods" not in shipped
    assert shipped["teacher_uri"] == rp.SHIPPED_DIGITS_TEACHER
    assert shipped["teacher_sha256"] == rp.SHIPPED_DIGITS_TEACHER_SHA256
    assert shipped["teacher_autoattack_record"] == rp.SHIPPED_DIGITS_TEACHER_EVAL
    assert shipped["teacher_autoattack_record_sha256"] == rp.SHIPPED_DIGITS_TEACHER_EVAL_SHA256
    assert "teacher_uri" not in trained and "teacher_sha256" not in trained
    assert not any(k.startswith("teacher_autoattack") for k in {**trained, **evaluated})
    assert evaluated["teacher_uri"] == rp.SHIPPED_DIGITS_TEACHER
    assert {k: v for k, v in shipped.items() if not k.startswith("teacher_")} == \
        {k: v for k, v in trained.items() if not k.startswith("teacher_")}
    assert trained["teacher_method"] == "sat"
    assert "teacher (100 epochs)" in capsys.readouterr().out


def test_local_steps_outside_the_loop_get_every_core(tmp_path):
    """`make_pipeline(lone_threads=N)` (what `run_local` passes when its loop steps have
    fewer threads than the machine has cores) sets RSLAD_TF_THREADS=N on the steps kfp's
    local runner runs alone, and on none of the loop's; without it no step sets it."""
    from kfp import compiler

    def envs(**kwargs):
        out = str(tmp_path / f"p{len(kwargs)}.yaml")
        compiler.Compiler().compile(rp.make_pipeline(None, **kwargs), out)
        with open(out) as f:
            spec = next(yaml.safe_load_all(f))
        return {name: executor["container"].get("env")
                for name, executor in spec["deploymentSpec"]["executors"].items()}

    lone = {"exec-train-teacher", "exec-import-teacher", "exec-train-surrogate",
            "exec-evaluate-whitebox-2"}  # the last one: the teacher's evaluation
    with_threads = envs(lone_threads=2)
    assert {n for n, env in with_threads.items() if env} == lone
    assert all(env == [{"name": "RSLAD_TF_THREADS", "value": "2"}]
               for n, env in with_threads.items() if n in lone)
    assert not any(envs().values())
