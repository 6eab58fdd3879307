"""Reports from hand-made eval JSON files: the paper's layout, mean ± std over seeds,
missing columns, the three formats, the plots and the command line."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from rslad_tf.evaluation import report
from rslad_tf.common.errors import UserError, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _eval(method, checkpoint="best", seed=0, model="resnet18", dataset="cifar10", **accs):
    d = {"dataset": dataset, "model": model, "method": method, "checkpoint": checkpoint,
         "eps": 8 / 255, "n_examples": 10000, "seed": 0, "batch_size": 256, "train_seed": seed,
         "attacks": {}, "seconds": {}}
    d.update(accs)
    return d


FULL = dict(clean_acc=83.0, fgsm_acc=60.0, pgd_sat_acc=54.0, pgd_trades_acc=56.0,
            cw_inf_acc=53.0, autoattack_acc=51.0)


@pytest.fixture
def evals():
    rslad = [_eval("rslad", seed=s, **dict(FULL, clean_acc=83.0 + s, autoattack_acc=51.0 + 2 * s))
             for s in range(3)]
    rslad_last = [_eval("rslad", "last", seed=0, **dict(FULL, autoattack_acc=49.5))]
    # SAT without AutoAttack (missing column) and listed first: rows must come out sorted.
    sat = [_eval("sat", clean_acc=82.0, fgsm_acc=56.0, pgd_sat_acc=49.0, pgd_trades_acc=51.0,
                 cw_inf_acc=48.5)]
    return sat + rslad + rslad_last


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_several_seeds_become_mean_and_std(evals):
    rows = report.build_table(evals)
    assert [(r["method"], r["checkpoint"]) for r in rows] == \
        [("sat", "best"), ("rslad", "best"), ("rslad", "last")]
    rslad = rows[1]
    assert rslad["n_runs"] == 3 and rslad["train_seeds"] == [0, 1, 2]
    clean = rslad["columns"]["Clean"]
    assert clean["mean"] == pytest.approx(84.0) and clean["std"] == pytest.approx(1.0)
    aa = rslad["columns"]["AA"]
    assert aa["mean"] == pytest.approx(53.0) and aa["std"] == pytest.approx(2.0)
    assert rslad["columns"]["FGSM"] == {"mean": 60.0, "std": 0.0, "n": 3}
    assert rows[0]["columns"]["AA"] is None
    assert "Square" not in rslad["columns"]  # no black-box numbers anywhere


def test_markdown_layout_and_missing_columns(evals):
    text = report.render(report.build_table(evals), "md")
    lines = text.splitlines()
    assert lines[0] == ("| Source | Dataset | Model | Method | Checkpoint | eps | Runs | Clean | "
                        "FGSM | PGD_SAT | PGD_TRADES | CW_inf | AA |")
    sat = next(line for line in lines if "| sat |" in line)
    assert sat.rstrip().endswith("| 48.50 | - |")
    rslad = next(line for line in lines if "| rslad | best |" in line)
    assert "84.00 ± 1.00" in rslad and "53.00 ± 2.00" in rslad and "| 3 |" in rslad
    last = next(line for line in lines if "| rslad | last |" in line)
    assert "| 49.50 |" in last and "±" not in last


def test_black_box_columns_appear_when_present(evals):
    evals.append(_eval("rslad", "best", seed=3, **dict(FULL, transfer_pgd_acc=64.1,
                                                       square_acc=57.9)))
    rows = report.build_table(evals)
    labels = list(rows[0]["columns"])
    assert labels[-3:] == ["PGD-20 transfer", "CW_inf transfer", "Square"]
    text = report.render(rows, "md")
    rslad = next(line for line in text.splitlines() if "| rslad | best |" in line)
    # one of four runs has transfer numbers; CW transfer none at all
    assert rslad.rstrip().endswith("| 64.10 | - | 57.90 |")


def test_csv_and_json_formats(evals):
    rows = report.build_table(evals)
    table = list(csv.DictReader(io.StringIO(report.render(rows, "csv"))))
    assert [r["method"] for r in table] == ["sat", "rslad", "rslad"]
    assert table[1]["Clean"] == "84.00" and table[1]["Clean_std"] == "1.00"
    assert table[0]["AA"] == "-" and table[0]["AA_std"] == "-"
    assert table[1]["n_runs"] == "3"
    data = json.loads(report.render(rows, "json"))
    assert data[0]["columns"]["AA"] is None
    assert data[1]["columns"]["AA"]["mean"] == pytest.approx(53.0)
    with pytest.raises(UserError, match="format"):
        report.render(rows, "html")


def test_std_is_the_sample_std():
    evals = [_eval("sat", seed=s, clean_acc=v) for s, v in enumerate([80.0, 81.0, 85.0])]
    stats = report.build_table(evals)[0]["columns"]["Clean"]
    assert stats["std"] == pytest.approx(float(np.std([80.0, 81.0, 85.0], ddof=1)))
    assert not math.isnan(stats["std"])


def test_different_eps_or_dataset_are_separate_rows():
    a = _eval("sat", clean_acc=80.0)
    b = dict(_eval("sat", clean_acc=70.0), eps=16 / 255)
    c = _eval("sat", clean_acc=60.0, dataset="cifar100")
    rows = report.build_table([a, b, c])
    assert len(rows) == 3 and all(r["n_runs"] == 1 for r in rows)


def test_load_evals_from_files_and_run_dirs(tmp_path, evals):
    run = tmp_path / "run"
    run.mkdir()
    _write(run, "eval_best.json", evals[1])
    _write(run, "eval_last.json", evals[4])
    single = _write(tmp_path, "one.json", evals[0])
    loaded = report.load_evals([str(run), single])
    assert [(e["method"], e["checkpoint"]) for e in loaded] == \
        [("rslad", "best"), ("rslad", "last"), ("sat", "best")]


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "eval JSON object"),
    ('{"dataset": "digits"}', "missing model"),
    ('{"dataset": "digits", "model": "m"}', "no accuracy"),
])
def test_bad_inputs_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        report.load_evals([str(path)])


def test_missing_paths_and_empty_run_dirs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report.load_evals([str(tmp_path / "nothing")])
    with pytest.raises(UserError, match="no eval_best.json"):
        report.load_evals([str(tmp_path)])


def test_plot_clean_vs_aa_writes_a_png(tmp_path, evals):
    rows = report.build_table(evals)
    path = report.plot_clean_vs_aa(rows, str(tmp_path / "plots" / "clean_vs_aa.png"))
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with pytest.raises(UserError, match="AutoAttack"):
        report.plot_clean_vs_aa(report.build_table([evals[0]]), str(tmp_path / "x.png"))


def test_plot_eps_sweep(trained_digits_model, digits_data, tmp_path):
    from rslad_tf.evaluation.core import accuracy_under_attack

    _, (x, y) = digits_data
    x, y = x[:64], y[:64]
    eps_list = [0.0, 0.05, 0.1, 0.2]
    path = str(tmp_path / "sweep.png")
    result = report.plot_eps_sweep(trained_digits_model, x, y, eps_list, path)
    accs = result["model"]
    assert len(accs) == 4
    assert accs[0] == pytest.approx(accuracy_under_attack(trained_digits_model, x, y))
    assert accs[0] >= accs[1] >= accs[2] >= accs[3]
    assert accs[3] < accs[0]
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC


# -- command line ----------------------------------------------------------------------------
def _cli(argv, capsys):
    code = run_cli(report.main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_the_table_and_writes_files(tmp_path, evals, capsys):
    paths = [_write(tmp_path, f"e{i}.json", e) for i, e in enumerate(evals)]
    code, out, _ = _cli(paths, capsys)
    assert code == 0 and "84.00 ± 1.00" in out
    target = tmp_path / "table.csv"
    code, out, _ = _cli(paths + ["--format", "csv", "--out", str(target),
                                 "--plot-dir", str(tmp_path / "plots")], capsys)
    assert code == 0 and target.read_text().startswith("source,dataset,model,method")
    assert (tmp_path / "plots" / "clean_vs_aa.png").read_bytes()[:8] == PNG_MAGIC
    # A second run never overwrites them: one line, exit 2, files unchanged.
    before = target.read_bytes(), (tmp_path / "plots" / "clean_vs_aa.png").read_bytes()
    code, out, err = _cli(paths + ["--format", "csv", "--out", str(target)], capsys)
    assert code == 2 and err.strip().endswith("already exists; choose another --out (nothing is "
                                              "overwritten)")
    code, out, err = _cli(paths + ["--out", str(tmp_path / "new.md"), "--plot-dir",
                                   str(tmp_path / "plots")], capsys)
    assert code == 2 and "choose another --plot-dir" in err
    assert not (tmp_path / "new.md").exists()
    assert before == (target.read_bytes(), (tmp_path / "plots" / "clean_vs_aa.png").read_bytes())


def test_cli_eps_sweep_for_run_dirs(tmp_path, trained_digits_model, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    trained_digits_model.save(str(run / "checkpoints" / "best.keras"))
    (run / "config.json").write_text(json.dumps(
        {"dataset": "digits", "model": "small_cnn", "method": "natural", "seed": 0,
         "epsilon": 0.2, "data_dir": None}))
    _write(run, "eval_best.json", _eval("natural", dataset="digits", model="small_cnn",
                                        **FULL))
    code, out, err = _cli([str(run), "--plot-dir", str(tmp_path / "plots"),
                           "--sweep-n-examples", "32", "--sweep-eps", "0,0.1,0.2"], capsys)
    assert code == 0, err
    assert (tmp_path / "plots" / "eps_sweep.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("argv,message", [
    (["/nonexistent/eval.json"], "does not exist"),
    (["{tmp}", "--format", "html"], "invalid choice"),
    (["{tmp}", "--sweep-n-examples", "0"], "--sweep-n-examples"),
    ([], "required"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, evals, capsys, argv, message):
    good = _write(tmp_path, "e.json", evals[0])
    argv = [good if a == "{tmp}" else a for a in argv]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_eps_is_written_as_the_papers_do():
    assert report.format_eps(8 / 255) == "8/255"
    assert report.format_eps(0.2) == "0.2"
    assert report.format_eps(None) == "-"
    text = report.render(report.build_table([_eval("sat", clean_acc=80.0)]), "md")
    assert "| 8/255 |" in text


def test_model_card_puts_the_paper_next_to_ours(evals):
    rows = report.with_paper(report.build_table(evals))
    sources = [(r["method"], r["checkpoint"], r["source"]) for r in rows]
    paper = [r for r in rows if r["source"] != "ours"]
    # The fixture's runs are cifar10 / resnet18: the paper reports sat and rslad there.
    assert {r["method"] for r in paper} <= {"sat", "rslad", "trades", "ard", "iad"}
    rslad_paper = next(r for r in paper if r["method"] == "rslad")
    assert rslad_paper["columns"]["AA"]["mean"] == 51.49
    # It follows our rslad rows (best, then last) directly.
    i = sources.index(("rslad", "best", rslad_paper["source"]))
    assert sources[i - 1][:1] == ("rslad",) and sources[i - 1][2] == "ours"
    text = report.render(rows, "md")
    assert "| paper (Zi et al. 2021) |" in text and "| ours |" in text


def test_params_column_when_the_evals_record_it(evals):
    for ev in evals:
        ev["params"] = 11173962 if ev["method"] == "rslad" else 2296922
    lines = report.render(report.build_table(evals), "md").splitlines()
    assert lines[0].startswith("| Source | Dataset | Model | Params | Method |")
    rslad = next(line for line in lines if "| rslad | best |" in line)
    assert "| 11,173,962 |" in rslad
    assert len(lines[1].split("|")) == len(lines[0].split("|"))


def test_robustbench_format_has_the_leaderboard_fields(tmp_path, evals, capsys):
    paths = [_write(tmp_path, f"e{i}.json", dict(ev, autoattack_impl="native"))
             for i, ev in enumerate(evals)]
    code, out, err = _cli(paths + ["--format", "robustbench"], capsys)
    assert code == 0, err
    entries = json.loads(out)
    assert len(entries) == 3  # sat best, rslad best (3 runs), rslad last; no paper rows
    sat, rslad, last = entries
    for entry in entries:
        assert {"name", "dataset", "threat_model", "eps", "clean_acc", "autoattack_acc",
                "architecture", "number_forward_passes", "additional_data",
                "footnote"} <= set(entry)
        assert entry["dataset"] == "cifar10" and entry["threat_model"] == "Linf"
        assert entry["eps"] == "8/255" and entry["architecture"] == "ResNet-18"
        assert entry["number_forward_passes"] == 1 and entry["additional_data"] is False
    # RobustBench writes accuracies as text with two decimals
    assert (rslad["clean_acc"], rslad["autoattack_acc"]) == ("84.00", "53.00")
    assert "mean of 3 training runs, AutoAttack std 2.00" in rslad["footnote"]
    assert "native" in rslad["footnote"] and last["autoattack_acc"] == "49.50"
    assert sat["autoattack_acc"] is None and "AutoAttack was not run" in sat["footnote"]


def test_robustbench_notes_a_partial_test_set():
    from rslad_tf.evaluation import robustbench

    row = report.build_table([_eval("trades", model="small_cnn(width=16)", dataset="digits",
                                    **dict(FULL, n_examples=200))])[0]
    (entry,) = robustbench.entries([row], report.format_eps)
    assert entry["architecture"] == "small CNN (width=16)" and entry["n_examples"] == 200
    assert "first 200 test points (RobustBench uses 10,000)" in entry["footnote"]
    assert "NOT in its standard version" not in entry["footnote"]
    smoke = _eval("trades", **FULL)
    smoke["attacks"] = {"autoattack": {"standard": False, "options": {"n_iter": 2}}}
    (entry,) = robustbench.entries(report.build_table([smoke]), report.format_eps)
    assert "AutoAttack NOT in its standard version" in entry["footnote"]
