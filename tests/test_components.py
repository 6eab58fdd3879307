"""Kubeflow components, through their plain Python functions, on tiny inputs: the artifacts
they write, and one clear error for each bad input (wrong artifact, mismatched SHA-256,
unknown method or attack, a model that does not fit the data).

Budget: one width-4 teacher, surrogate and student, one epoch of one step each; the
evaluations use the cheap white-box attacks on 16 points (the reference AutoAttack and
Square run in the pipeline test)."""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from components.common import (DATASET_MANIFEST, MODEL_FILE, MODEL_INFO, model_file,
                               parse_list, parse_model_spec, read_dataset)
from components.distill_student import distill_student_fn
from components.evaluate_blackbox import evaluate_blackbox_fn
from components.evaluate_whitebox import evaluate_whitebox_fn
from components.evaluation import craft_transfer_examples
from components.import_teacher import import_teacher_fn
from components.make_report import make_report_fn, merge_evals
from components.prepare_data import prepare_data_fn
from components.train_teacher import train_teacher_fn
from rslad_tf.data import DataError
from rslad_tf.common.errors import UserError

TINY = dict(model="small_cnn:width=4", epochs=1, max_steps=1, attack_steps=1,
            eval_n_examples=16)
# A few iterations and queries of every AutoAttack attack (not the standard version).
SMOKE_AA = '{"n_iter": 2, "n_restarts": 1, "n_target_classes": 1, "n_queries": 5}'


def quiet(*_args, **_kwargs):
    pass


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="module")
def data_dir(work):
    out = str(work / "data")
    prepare_data_fn(out, dataset="digits", log=quiet)
    return out


@pytest.fixture(scope="module")
def trained_dir(work, data_dir):
    out = str(work / "trained")
    train_teacher_fn(data_dir, out, method="trades", log=quiet, **TINY)
    return out


@pytest.fixture(scope="module")
def teacher_dir(work, data_dir, trained_dir):
    out = str(work / "teacher")
    import_teacher_fn(data_dir, out, trained_dir=trained_dir, log=quiet)
    return out


@pytest.fixture(scope="module")
def surrogate_dir(work, data_dir):
    out = str(work / "surrogate")
    train_teacher_fn(data_dir, out, method="sat", role="surrogate", seed=1, log=quiet,
                     **dict(TINY, model="small_cnn:width=6"))
    return out


@pytest.fixture(scope="module")
def student_dir(work, data_dir, teacher_dir):
    out = str(work / "student")
    distill_student_fn(data_dir, out, method="rslad", teacher_dir=teacher_dir, log=quiet,
                       **TINY)
    return out


def _info(artifact_dir):
    with open(os.path.join(artifact_dir, MODEL_INFO)) as f:
        return json.load(f)


# -- prepare_data ----------------------------------------------------------------------
def test_prepare_data_writes_a_checked_manifest(data_dir):
    manifest = read_dataset(data_dir)  # re-reads the test split and compares fingerprints
    assert manifest["dataset"] == "digits"
    assert (manifest["n_train"], manifest["n_test"]) == (1347, 450)
    assert manifest["image_shape"] == [8, 8, 1] and manifest["num_classes"] == 10
    assert sum(manifest["train_class_counts"]) == 1347
    assert len(manifest["test_fingerprint"]) == 64


def test_prepare_data_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*digits"):
        prepare_data_fn(str(tmp_path / "d"), dataset="mnist", log=quiet)


def test_prepare_data_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        prepare_data_fn(str(tmp_path / "d"), log=quiet)
    assert (tmp_path / "d" / "x").read_text() == "keep me"


def test_dataset_artifact_checks(tmp_path, data_dir, trained_dir):
    with pytest.raises(UserError, match="not a dataset artifact"):
        read_dataset(trained_dir)  # a Model artifact where a Dataset belongs
    changed = tmp_path / "changed"
    shutil.copytree(data_dir, changed)
    manifest = json.loads((changed / DATASET_MANIFEST).read_text())
    manifest["test_fingerprint"] = "0" * 64
    (changed / DATASET_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="differs from the one prepare_data fingerprinted"):
        read_dataset(str(changed))
    (changed / DATASET_MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        read_dataset(str(changed))


# -- parameters ------------------------------------------------------------------------
def test_parameter_parsing():
    assert parse_model_spec("small_cnn:width=32") == ("small_cnn", {"width": 32})
    assert parse_model_spec("") == ("", {})
    with pytest.raises(UserError, match="unknown model 'vgg99'"):
        parse_model_spec("vgg99")
    with pytest.raises(UserError, match="bad model spec"):
        parse_model_spec("small_cnn:width")
    assert parse_list("clean, fgsm", ("clean", "fgsm"), "attack") == ["clean", "fgsm"]
    with pytest.raises(UserError, match="unknown attack 'pgd'"):
        parse_list("clean,pgd", ("clean", "fgsm"), "attack")


# -- train_teacher / import_teacher ----------------------------------------------------
def test_train_teacher_writes_a_model_artifact(trained_dir):
    info = _info(trained_dir)
    assert info["role"] == "teacher" and info["method"] == "trades"
    assert info["model_name"] == "small_cnn(width=4)" and info["epochs"] == 1
    from rslad_tf.common import fileio

    assert fileio.sha256(os.path.join(trained_dir, MODEL_FILE)) == info["sha256"]
    config = json.load(open(os.path.join(trained_dir, "run", "config.json")))
    assert config["preset"] == "digits-teacher" and config["max_steps"] == 1
    # A shorter run keeps the shape of the schedule.
    assert all(m <= 1 for m in config["lr_milestones"])


def test_preset_resolution():
    from components.training import student_preset_name, teacher_preset_name

    assert teacher_preset_name("digits") == "digits-teacher"
    assert teacher_preset_name("cifar10") == "cifar10-wrn34-10-trades"
    assert student_preset_name("digits", "rslad") == "digits-rslad"
    assert student_preset_name("cifar10", "rslad") == "cifar10-resnet18-rslad"
    assert student_preset_name("cifar10", "ard", "mobilenetv2") == "cifar10-mobilenetv2-ard"
    assert student_preset_name("cifar10", "sat", "resnet50") == "cifar10-resnet50-sat"
    with pytest.raises(UserError, match="unknown method 'kd'"):
        student_preset_name("digits", "kd")


def test_surrogate_is_a_sat_model_of_its_own(surrogate_dir, trained_dir):
    info = _info(surrogate_dir)
    assert info["role"] == "surrogate" and info["method"] == "sat" and info["seed"] == 1
    assert info["model_name"] == "small_cnn(width=6)"
    assert info["sha256"] != _info(trained_dir)["sha256"]
    config = json.load(open(os.path.join(surrogate_dir, "run", "config.json")))
    assert config["preset"] == "digits-sat-surrogate"


def test_train_teacher_bad_inputs(tmp_path, data_dir):
    with pytest.raises(UserError, match="unknown teacher method 'rslad'.*trades, sat"):
        train_teacher_fn(data_dir, str(tmp_path / "t"), method="rslad", log=quiet)
    with pytest.raises(UserError, match="not a dataset artifact"):
        train_teacher_fn(str(tmp_path), str(tmp_path / "t2"), log=quiet)
    with pytest.raises(UserError, match="epochs must be a positive"):
        train_teacher_fn(data_dir, str(tmp_path / "t3"), epochs=-1, log=quiet)


def test_teacher_skipped_when_imported(tmp_path, data_dir):
    out = str(tmp_path / "skipped")
    info = train_teacher_fn(data_dir, out, teacher_uri="gs://bucket/teacher.keras", log=quiet)
    assert info["skipped"] and os.listdir(out) == ["skipped.json"]
    with pytest.raises(UserError, match="step was skipped"):
        import_teacher_fn(data_dir, str(tmp_path / "t"), trained_dir=out, log=quiet)


def test_import_teacher_from_a_path_with_sha256(tmp_path, data_dir, trained_dir):
    source = os.path.join(trained_dir, MODEL_FILE)
    digest = _info(trained_dir)["sha256"]
    out = str(tmp_path / "imported")
    info = import_teacher_fn(data_dir, out, uri=source, expected_sha256=digest.upper(),
                             log=quiet)
    assert info["sha256"] == digest and info["source"] == source
    assert info["expected_sha256"] == digest
    assert model_file(out) == os.path.join(out, MODEL_FILE)
    # Its parameter count is the one the report's table shows (trainable weights only):
    # the small CNN's BatchNorm moving statistics are state, not parameters.
    teacher = keras.saving.load_model(source, compile=False)
    trainable = sum(int(np.prod(w.shape)) for w in teacher.trainable_weights)
    assert info["params"] == trainable < teacher.count_params()
    # file:// works too.
    info = import_teacher_fn(data_dir, str(tmp_path / "imported2"), uri="file://" + source,
                             log=quiet)
    assert info["sha256"] == digest


def test_the_demo_imports_the_shipped_teacher_pinned_by_its_sha256(tmp_path, data_dir):
    """The demo's teacher is the file the study's record lists (docs/study_runs/SHA256SUMS),
    checked by import_teacher against the pinned digest and recorded with its method, so
    the report's row reads "teacher (sat)"; a copy changed by one byte is refused."""
    from pipelines import rslad_pipeline as rp
    from rslad_tf.common import fileio

    shipped, digest = rp.SHIPPED_DIGITS_TEACHER, rp.SHIPPED_DIGITS_TEACHER_SHA256
    record = os.path.join(os.path.dirname(os.path.dirname(shipped)), "..", "SHA256SUMS")
    with open(record) as f:
        listed = dict(line.split()[::-1] for line in f if line.strip())
    assert listed["teacher-w64-eps0.2/checkpoints/last.keras"] == digest
    demo = rp.LOCAL_PRESETS["digits"]
    assert demo["teacher_uri"] == shipped and demo["teacher_sha256"] == digest
    info = import_teacher_fn(data_dir, str(tmp_path / "t"), uri=shipped,
                             expected_sha256=digest, method=demo["teacher_method"],
                             log=quiet)
    assert info["sha256"] == fileio.sha256(shipped) == digest
    assert info["method"] == "sat" and info["params"] == 260_682
    assert info["checkpoint"] == "last.keras"
    changed = tmp_path / "changed.keras"
    data = bytearray(open(shipped, "rb").read())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        import_teacher_fn(data_dir, str(tmp_path / "c"), uri=str(changed),
                          expected_sha256=digest, log=quiet)


def test_the_demo_takes_the_shipped_teacher_autoattack_from_its_pinned_record(tmp_path,
                                                                              data_dir):
    """The demo's evaluate-teacher step, as the `digits` preset runs it: the shipped record
    is pinned, names the shipped teacher's file, repeats the study's evaluation of it
    (docs/study_runs/.../eval_last.json, the same six numbers), and applies: the five
    columns measured now agree with it, and AutoAttack is taken from it, not run."""
    from pipelines import rslad_pipeline as rp
    from rslad_tf.common import fileio

    demo = rp.LOCAL_PRESETS["digits"]
    record_path = demo["teacher_autoattack_record"]
    assert fileio.sha256(record_path) == demo["teacher_autoattack_record_sha256"]
    with open(record_path) as f:
        record = json.load(f)
    assert record["model_sha256"] == rp.SHIPPED_DIGITS_TEACHER_SHA256
    study = os.path.join(os.path.dirname(os.path.dirname(rp.SHIPPED_DIGITS_TEACHER)),
                         "eval_last.json")
    with open(study) as f:
        study = json.load(f)
    columns = [k for k in study if k.endswith("_acc")]
    assert len(columns) == 6
    assert {k: record[k] for k in columns} == {k: study[k] for k in columns}

    teacher_dir = str(tmp_path / "teacher")
    import_teacher_fn(data_dir, teacher_dir, uri=demo["teacher_uri"],
                      expected_sha256=demo["teacher_sha256"],
                      method=demo["teacher_method"], log=quiet)
    result = evaluate_whitebox_fn(
        data_dir, teacher_dir, str(tmp_path / "r"), n_examples=demo["eval_n_examples"],
        autoattack_impl=demo["autoattack_impl"], recorded_autoattack=record_path,
        recorded_autoattack_sha256=demo["teacher_autoattack_record_sha256"], log=quiet)
    assert result["recorded"]["autoattack"]["source"] == record_path
    assert result["autoattack_acc"] == record["autoattack_acc"]
    assert "autoattack" not in result["seconds"]


def test_import_teacher_refuses_a_mismatched_sha256(tmp_path, data_dir, trained_dir):
    source = os.path.join(trained_dir, MODEL_FILE)
    out = tmp_path / "imported"
    with pytest.raises(UserError, match="has SHA-256 .* expected 0{64}; refusing"):
        import_teacher_fn(data_dir, str(out), uri=source, expected_sha256="0" * 64,
                          log=quiet)
    assert not (out / MODEL_FILE).exists() and not (out / "incoming.keras").exists()
    with pytest.raises(UserError, match="not a SHA-256 hex digest"):
        import_teacher_fn(data_dir, str(tmp_path / "b"), uri=source, expected_sha256="abc",
                          log=quiet)


def test_import_teacher_bad_sources(tmp_path, data_dir, trained_dir):
    with pytest.raises(UserError, match="does not exist"):
        import_teacher_fn(data_dir, str(tmp_path / "a"), uri=str(tmp_path / "none.keras"),
                          log=quiet)
    with pytest.raises(UserError, match="PyTorch checkpoint.*convert_teacher"):
        import_teacher_fn(data_dir, str(tmp_path / "b"), uri="model_cifar_wrn.pt", log=quiet)
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    with pytest.raises(UserError, match=r"not a Keras \.keras archive \(zip\)"):
        import_teacher_fn(data_dir, str(tmp_path / "c"), uri=str(junk), log=quiet)
    with pytest.raises(UserError, match="no teacher"):
        import_teacher_fn(data_dir, str(tmp_path / "d"), log=quiet)
    # A trained teacher whose file changed after train_teacher recorded its SHA-256.
    changed = tmp_path / "changed"
    shutil.copytree(trained_dir, changed)
    with open(changed / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="changed since train_teacher wrote it"):
        import_teacher_fn(data_dir, str(tmp_path / "e"), trained_dir=str(changed), log=quiet)


def test_import_teacher_refuses_a_model_for_other_data(tmp_path, data_dir):
    from rslad_tf import models
    from rslad_tf.methods import saving

    cifar_model = models.create("small_cnn", 10, input_shape=(32, 32, 3), width=2)
    path = str(tmp_path / "cifar.keras")
    saving.save_model(cifar_model, path)
    with pytest.raises(UserError, match=r"takes \(32, 32, 3\).*digits has images \(8, 8, 1\)"):
        import_teacher_fn(data_dir, str(tmp_path / "t"), uri=path, log=quiet)


# -- distill_student -------------------------------------------------------------------
def test_distill_student_rslad(student_dir, teacher_dir):
    info = _info(student_dir)
    assert info["role"] == "student" and info["method"] == "rslad"
    assert info["teacher_sha256"] == _info(teacher_dir)["sha256"]
    config = json.load(open(os.path.join(student_dir, "run", "config.json")))
    assert config["preset"] == "digits-rslad" and config["model_kwargs"] == {"width": 4}
    assert config["teacher_path"].endswith(MODEL_FILE)


def test_a_last_checkpoint_run_skips_the_selection(tmp_path, data_dir):
    """With ``checkpoint="last"`` nothing reads the best checkpoint and the evaluation steps
    measure the last one: the run evaluates no epoch, writes no best.keras, and trains the
    very weights of a run that selects on every epoch."""
    import csv

    runs = {}
    for checkpoint in ("best", "last"):
        out = str(tmp_path / checkpoint)
        info = distill_student_fn(data_dir, out, method="sat", checkpoint=checkpoint,
                                  log=quiet, overrides='{"eval_every": 1, "lr_milestones": [3]}',
                                  **dict(TINY, epochs=3, max_steps=2))
        with open(os.path.join(out, "run", "history.csv")) as f:
            evaluated = [int(row["epoch"]) + 1 for row in csv.DictReader(f)
                         if row.get("pgd20_acc")]
        checkpoints = os.path.join(out, "run", "checkpoints")
        runs[checkpoint] = (evaluated, sorted(n for n in os.listdir(checkpoints)
                                              if n.endswith(".keras")),
                            keras.models.load_model(os.path.join(checkpoints, "last.keras"),
                                                    compile=False).get_weights(), info)
    assert runs["best"][:2] == ([1, 2, 3], ["best.keras", "last.keras"])
    assert runs["last"][:2] == ([], ["last.keras"])
    assert runs["best"][3]["best_epoch"] in (1, 2, 3)
    assert runs["last"][3]["best_epoch"] is None and runs["last"][3]["last_pgd20_acc"] is None
    for a, b in zip(runs["best"][2], runs["last"][2]):
        np.testing.assert_array_equal(a, b)


def test_the_teacher_cache_reaches_the_methods_that_have_one(tmp_path, data_dir, teacher_dir):
    """``teacher_cache`` turns the soft-label cache on for ARD, IAD and RSLAD (the second
    epoch then reads every clean teacher logit from it) and leaves SAT as it is."""
    import csv

    for method in ("iad", "sat"):
        out = str(tmp_path / method)
        distill_student_fn(data_dir, out, method=method, teacher_dir=teacher_dir,
                           teacher_cache=True, log=quiet, **dict(TINY, epochs=2, max_steps=0))
        with open(os.path.join(out, "run", "config.json")) as f:
            assert json.load(f)["teacher_cache"] is (method == "iad")
        with open(os.path.join(out, "run", "history.csv")) as f:
            rates = [row.get("cache_hit_rate") for row in csv.DictReader(f)]
        assert rates == (["0.0", "1.0"] if method == "iad" else [None, None])


def test_distill_student_bad_inputs(tmp_path, data_dir, teacher_dir):
    with pytest.raises(UserError, match="unknown method 'kd'; choose one of: natural, sat"):
        distill_student_fn(data_dir, str(tmp_path / "a"), method="kd", log=quiet)
    with pytest.raises(UserError, match="distils from a teacher"):
        distill_student_fn(data_dir, str(tmp_path / "b"), method="ard", log=quiet, **TINY)
    with pytest.raises(UserError, match="holds no model.keras"):
        distill_student_fn(data_dir, str(tmp_path / "c"), method="rslad",
                           teacher_dir=data_dir, log=quiet, **TINY)  # a Dataset as teacher
    # A teacher changed after it was written is refused by its recorded SHA-256.
    changed = tmp_path / "changed"
    shutil.copytree(teacher_dir, changed)
    with open(changed / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="has SHA-256 .* expected"):
        distill_student_fn(data_dir, str(tmp_path / "d"), method="iad",
                           teacher_dir=str(changed), log=quiet, **TINY)


def test_distill_student_without_teacher_for_natural(tmp_path, data_dir):
    info = distill_student_fn(data_dir, str(tmp_path / "nat"), method="natural", log=quiet,
                              **TINY)
    assert info["method"] == "natural" and "teacher_sha256" not in info


# -- evaluation ------------------------------------------------------------------------
def test_evaluate_whitebox(tmp_path, data_dir, student_dir):
    out = str(tmp_path / "results")
    result = evaluate_whitebox_fn(data_dir, student_dir, out, attacks="clean,fgsm",
                                  n_examples=16, log=quiet)
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    assert result["method"] == "rslad" and result["model"] == "small_cnn(width=4)"
    assert result["n_examples"] == 16 and result["dataset"] == "digits"
    assert 0 <= result["clean_acc"] <= 100 and 0 <= result["fgsm_acc"] <= 100
    assert result["model_sha256"] == _info(student_dir)["sha256"]


def test_evaluate_whitebox_autoattack_settings_reach_the_suite(tmp_path, data_dir, student_dir):
    """The implementation and the (smoke-test) overrides are passed on and recorded."""
    result = evaluate_whitebox_fn(
        data_dir, student_dir, str(tmp_path / "r"), attacks="autoattack", n_examples=8,
        autoattack_impl="native", log=quiet, autoattack_options=SMOKE_AA)
    assert result["autoattack_impl"] == "native"
    assert result["attacks"]["autoattack"]["standard"] is False
    assert 0 <= result["autoattack_acc"] <= 100


def test_evaluate_whitebox_takes_a_recorded_autoattack_only_when_it_applies(
        tmp_path, data_dir, student_dir, teacher_dir):
    """A record of this very file with these settings supplies AutoAttack (not run: no
    seconds for it) once the columns measured now agree with it; a record pinned by
    another SHA-256 is refused in one line; a record of another model is not used:
    AutoAttack runs, and gives what a run without any record gives."""
    from rslad_tf.common import fileio

    settings = dict(attacks="clean,fgsm,autoattack", n_examples=8, autoattack_impl="native",
                    autoattack_options=SMOKE_AA)
    record = str(tmp_path / "record.json")
    made = evaluate_whitebox_fn(data_dir, student_dir, record, log=quiet, **settings)
    assert made["model_sha256"] == _info(student_dir)["sha256"]
    lines = []
    reused = evaluate_whitebox_fn(data_dir, student_dir, str(tmp_path / "r1"),
                                  recorded_autoattack=record,
                                  recorded_autoattack_sha256=fileio.sha256(record),
                                  log=lines.append, **settings)
    assert reused["autoattack_acc"] == made["autoattack_acc"]
    assert "autoattack" not in reused["seconds"] and "fgsm" in reused["seconds"]
    assert reused["recorded"]["autoattack"]["source"] == record
    assert any("recorded: " in line for line in lines)

    with pytest.raises(UserError, match="changed since it was pinned"):
        evaluate_whitebox_fn(data_dir, student_dir, str(tmp_path / "r2"),
                             recorded_autoattack=record,
                             recorded_autoattack_sha256="0" * 64, log=quiet, **settings)
    with pytest.raises(UserError, match="recorded evaluation file .* does not exist"):
        evaluate_whitebox_fn(data_dir, student_dir, str(tmp_path / "r3"),
                             recorded_autoattack=str(tmp_path / "missing.json"), log=quiet,
                             **settings)

    lines = []
    other = evaluate_whitebox_fn(data_dir, teacher_dir, str(tmp_path / "r4"),
                                 recorded_autoattack=record, log=lines.append, **settings)
    assert "recorded" not in other and "autoattack" in other["seconds"]
    assert any("does not apply: it was made on another file" in line for line in lines)
    plain = evaluate_whitebox_fn(data_dir, teacher_dir, str(tmp_path / "r5"), log=quiet,
                                 **settings)
    assert other["autoattack_acc"] == plain["autoattack_acc"]
    assert other["autoattack_per_attack"] == plain["autoattack_per_attack"]


def test_evaluate_blackbox_transfer(tmp_path, data_dir, student_dir, surrogate_dir):
    out = str(tmp_path / "results")
    result = evaluate_blackbox_fn(data_dir, student_dir, surrogate_dir, out,
                                  attacks="transfer_pgd", n_examples=16, log=quiet)
    assert 0 <= result["transfer_pgd_acc"] <= 100
    assert result["surrogate_model"] == "small_cnn(width=6)"
    assert result["surrogate_sha256"] == _info(surrogate_dir)["sha256"]
    # The gradient-masking measurements are the white-box step's (the report checks the
    # merged row): this step does not repeat them.
    assert "sanity" not in result


def test_the_surrogate_step_crafts_the_transfer_images_once(tmp_path, data_dir, student_dir,
                                                            surrogate_dir):
    """train_surrogate's crafting (the pipeline's eval settings) is what every black-box
    step then reads: the same numbers as crafting in the step; at another eps (a sweep
    cell's) the step crafts its own."""
    crafted = str(tmp_path / "surrogate")
    shutil.copytree(surrogate_dir, crafted)
    settings = dict(n_examples=16, epsilon=0.1, batch_size=8, seed=3)
    assert craft_transfer_examples(data_dir, crafted, attacks="square", log=quiet) is None
    made_with = craft_transfer_examples(data_dir, crafted, attacks="transfer_pgd,square",
                                        log=quiet, **settings)
    assert list(made_with["attacks"]) == ["transfer_pgd"] and made_with["eps"] == 0.1
    live = evaluate_blackbox_fn(data_dir, student_dir, surrogate_dir, str(tmp_path / "live"),
                                attacks="transfer_pgd", log=quiet, **settings)
    read = evaluate_blackbox_fn(data_dir, student_dir, crafted, str(tmp_path / "read"),
                                attacks="transfer_pgd", log=quiet, **settings)
    assert read["transfer_pgd_acc"] == live["transfer_pgd_acc"]
    assert "crafted" in read["attacks"]["transfer_pgd"]
    lines = []
    other = evaluate_blackbox_fn(data_dir, student_dir, crafted, str(tmp_path / "other"),
                                 attacks="transfer_pgd", log=lines.append,
                                 **dict(settings, epsilon=0.2))
    assert "crafted" not in other["attacks"]["transfer_pgd"]
    assert any("do not apply (its eps is 0.1" in line for line in lines)


def test_evaluate_bad_inputs(tmp_path, data_dir, student_dir, surrogate_dir):
    out = str(tmp_path / "r")
    with pytest.raises(UserError, match="unknown attack 'square'"):  # black-box in white-box
        evaluate_whitebox_fn(data_dir, student_dir, out, attacks="clean,square", log=quiet)
    with pytest.raises(UserError, match="unknown attack 'pgd'"):
        evaluate_blackbox_fn(data_dir, student_dir, surrogate_dir, out, attacks="pgd",
                             log=quiet)
    with pytest.raises(UserError, match="holds no model.keras"):
        evaluate_whitebox_fn(data_dir, data_dir, out, attacks="clean", log=quiet)
    with pytest.raises(UserError, match="not a dataset artifact"):
        evaluate_whitebox_fn(student_dir, student_dir, out, attacks="clean", log=quiet)
    with pytest.raises(UserError, match="needs a separately trained model|the surrogate is the"):
        evaluate_blackbox_fn(data_dir, student_dir, student_dir, out, attacks="transfer_cw",
                             log=quiet)
    with pytest.raises(UserError, match="transfers from a surrogate"):
        evaluate_blackbox_fn(data_dir, student_dir, "", out, attacks="transfer_cw", log=quiet)
    with pytest.raises(UserError, match="n_examples"):
        evaluate_whitebox_fn(data_dir, student_dir, out, attacks="clean", n_examples=-3,
                             log=quiet)
    with pytest.raises(UserError, match="autoattack_options"):
        evaluate_whitebox_fn(data_dir, student_dir, out, attacks="clean",
                             autoattack_options="{bad", log=quiet)
    with pytest.raises(UserError, match="unknown square_options n_iterations"):
        evaluate_blackbox_fn(data_dir, student_dir, surrogate_dir, out, attacks="square",
                             square_options='{"n_iterations": 3}', log=quiet)
    with pytest.raises(UserError, match="unknown autoattack_impl 'torch'"):
        evaluate_whitebox_fn(data_dir, student_dir, out, attacks="clean",
                             autoattack_impl="torch", log=quiet)
    assert not os.path.exists(out)


# -- make_report -----------------------------------------------------------------------
def _eval(method, **accs):
    return {"dataset": "digits", "model": "small_cnn(width=16)", "method": method,
            "checkpoint": "best", "eps": 0.2, "n_examples": 16, "attacks": {}, **accs}


def test_merge_evals_joins_white_and_black_box_in_method_order():
    white = [_eval("rslad", clean_acc=90.0, autoattack_acc=50.0),
             _eval("natural", clean_acc=99.0, autoattack_acc=0.0)]
    black = [_eval("natural", square_acc=1.0, transfer_pgd_acc=2.0),
             _eval("rslad", square_acc=60.0, transfer_pgd_acc=70.0)]
    rows = merge_evals(white, black)
    assert [r["method"] for r in rows] == ["natural", "rslad"]
    assert rows[1]["clean_acc"] == 90.0 and rows[1]["square_acc"] == 60.0


def _sanity(zero=0.0, by_steps=(40.0, 38.0)):
    return {"n_points": 16, "zero_gradient_fraction": zero,
            "pgd_accuracy_by_steps": {"5": by_steps[0], "20": by_steps[1]}, "warnings": []}


def test_the_report_checks_gradient_masking_on_the_merged_rows(tmp_path):
    """Each step's eval JSON alone cannot see a black-box attack beating the white-box ones;
    the report's merged row can, and says so, next to the white-box step's own symptoms."""
    white = {"sat": _eval("sat", clean_acc=90.0, pgd_sat_acc=50.0, autoattack_acc=45.0,
                          sanity=_sanity()),
             "rslad": _eval("rslad", clean_acc=92.0, pgd_sat_acc=55.0, autoattack_acc=48.0,
                            sanity=_sanity(zero=0.25, by_steps=(40.0, 44.0)))}
    black = {"sat": _eval("sat", square_acc=60.0, transfer_pgd_acc=70.0),
             "rslad": _eval("rslad", square_acc=30.0, transfer_pgd_acc=75.0)}
    paths = {}
    for kind, evals in (("w", white), ("b", black)):
        for method, result in evals.items():
            paths.setdefault(kind, []).append(str(tmp_path / f"{kind}-{method}.json"))
            with open(paths[kind][-1], "w") as f:
                json.dump(result, f)
    out = [str(tmp_path / n) for n in ("report", "table", "plot")]
    make_report_fn(paths["w"], paths["b"], *out, log=quiet)
    lines = [line for line in open(out[0]).read().splitlines() if "**warning**" in line]
    assert len(lines) == 3 and all("rslad (small_cnn(width=16)" in line for line in lines)
    assert any("black-box square (30.00%) is stronger" in line for line in lines)
    assert any("all-zero input gradient" in line for line in lines)
    assert any("rises with more steps" in line for line in lines)
    # Without the black-box row the same white-box result raises only its own two.
    make_report_fn(paths["w"], [], *(p + "-white" for p in out), log=quiet)
    assert open(out[0] + "-white").read().count("**warning**") == 2
    # A clean bill is one line; results without the measurements get none.
    white["rslad"]["sanity"] = _sanity()
    black["rslad"]["square_acc"] = 60.0
    for kind, evals in (("w", white), ("b", black)):
        with open(str(tmp_path / f"{kind}-rslad.json"), "w") as f:
            json.dump(evals["rslad"], f)
    make_report_fn(paths["w"], paths["b"], *(p + "-clean" for p in out), log=quiet)
    text = open(out[0] + "-clean").read()
    assert "**warning**" not in text and "no symptom in any of the 2 evaluated models" in text


def test_make_report(tmp_path):
    methods = ("natural", "sat", "rslad")
    columns = ("clean_acc", "fgsm_acc", "pgd_sat_acc", "pgd_trades_acc", "cw_inf_acc",
               "autoattack_acc")
    white, black = [], []
    for i, method in enumerate(methods):
        for kind, names, results in (("w", columns, white),
                                     ("b", ("transfer_pgd_acc", "transfer_cw_acc",
                                            "square_acc"), black)):
            path = tmp_path / f"{kind}{i}.json"
            path.write_text(json.dumps(_eval(method, **{n: 10.0 * i + 1 for n in names})))
            results.append(str(path))
    report, table, plot = (str(tmp_path / n) for n in ("report", "table", "plot"))
    rows = make_report_fn(white, black, report, table, plot, log=quiet)
    assert len(rows) == 3
    text = open(report).read()
    assert "| " in text and "data:image/png;base64," in text
    for method in methods:
        assert f"| {method} |" in text
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table_rows = json.load(open(table))
    assert [r["method"] for r in table_rows] == list(methods)
    for i, row in enumerate(table_rows):
        assert row["n_runs"] == 1  # white- and black-box results of a model make one row
        assert len(row["columns"]) == 9
        assert all(stats["mean"] == 10.0 * i + 1 for stats in row["columns"].values())


def test_make_report_says_which_teacher_column_was_recorded(tmp_path):
    white = tmp_path / "w.json"
    white.write_text(json.dumps(_eval("rslad", clean_acc=90.0, autoattack_acc=50.0)))
    teacher = tmp_path / "teacher.json"
    teacher.write_text(json.dumps(_eval(
        "sat", clean_acc=99.3, fgsm_acc=85.6, autoattack_acc=73.1,
        recorded={"autoattack": {"source": "/repo/docs/demo_teacher_eval.json",
                                 "record_sha256": "ab" * 32, "seconds": 782.5,
                                 "checked": {"clean": {}, "fgsm": {}},
                                 "tolerance_points": 1}})))
    out = [str(tmp_path / n) for n in ("r", "t", "p")]
    rows = make_report_fn([str(white)], [], *out, teacher_file=str(teacher), log=quiet)
    assert rows[0]["method"] == "teacher (sat)"
    text = open(out[0]).read()
    assert ("- teacher (sat) (small_cnn(width=16)): AA from the record demo_teacher_eval.json "
            "(SHA-256 abababababab...), which took 13 min to measure; made on this very "
            "model file, with these settings; the other 2 columns, measured in this run, "
            "agree with it within 1 test point each") in text
    plain = [str(tmp_path / n) for n in ("r2", "t2", "p2")]
    make_report_fn([str(white)], [], *plain, log=quiet)
    assert "record" not in open(plain[0]).read()


def test_make_report_without_autoattack_still_plots(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(_eval("sat", clean_acc=90.0, fgsm_acc=50.0)))
    out = [str(tmp_path / n) for n in ("r", "t", "p")]
    make_report_fn([str(path)], [], *out, log=quiet)
    with open(out[2], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_make_report_bad_inputs(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("no json here")
    out = [str(tmp_path / n) for n in ("r", "t", "p")]
    with pytest.raises(UserError, match="is not an eval JSON"):
        make_report_fn([str(bad)], [], *out, log=quiet)
    manifest = tmp_path / "manifest"
    manifest.write_text(json.dumps({"dataset": "digits"}))  # JSON, but no accuracies
    with pytest.raises(UserError, match="no accuracies"):
        make_report_fn([str(manifest)], [], *out, log=quiet)
    with pytest.raises(UserError, match="no evaluation results"):
        make_report_fn([], [], *out, log=quiet)
