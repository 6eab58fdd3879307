"""Paper-style tables and plots from eval JSON files; `python -m rslad_tf.report`.

Table layout of the paper (docs/paper.md section 5): one row per dataset x model x method x
checkpoint (best / last), columns Clean, FGSM, PGD_SAT, PGD_TRADES, CW_inf, AA, and the
black-box columns (PGD-20 transfer, CW_inf transfer, Square) when any input has them.
Several eval JSONs of the same (dataset, model, method, checkpoint, eps, grid cell), e.g.
runs of one preset with different ``--seed``, become one row with mean ± standard
deviation (sample standard deviation, ddof = 1) and the number of runs; the row keeps each
run's numbers (``runs``; `render_runs` lists them). The grid cell (``grid_cell``, a label
such as ``width=8`` that the pipeline's sweeps record) is absent from older eval JSONs,
which group as before. A column no input of a row has is "-" in Markdown and CSV, null in
JSON.

Plots (PNG, matplotlib's Agg backend): clean against AutoAttack accuracy per row, and a
PGD sweep of robust accuracy against epsilon.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys

from rslad_tf.common import fileio, vocabulary
from rslad_tf.common.errors import ArgumentParser, UserError, run_cli
from rslad_tf.evaluation.result import EvalResult

# (label, eval JSON key) of the columns: the white-box suite always, the black-box
# columns when any input has them (`rslad_tf.common.vocabulary.EVAL_COLUMNS`).
COLUMNS = tuple((c.label, c.json_key) for c in vocabulary.EVAL_COLUMNS if not c.black_box)
BLACK_BOX_COLUMNS = tuple((c.label, c.json_key) for c in vocabulary.EVAL_COLUMNS
                          if c.black_box)
# The two columns of the clean-against-AutoAttack plot.
CLEAN_LABEL = vocabulary.COLUMNS_BY_KEY["clean"].label
AA_LABEL = vocabulary.COLUMNS_BY_KEY["autoattack"].label
# artifact_format: None for a checkpoint, else the exported artifact's format
# (`rslad_tf.evaluation.artifact_eval`): each artifact gets its own row, right after its
# float model.
# grid_cell: the label of a sweep's grid cell (None outside sweeps and in older JSONs).
KEY_FIELDS = ("dataset", "model", "method", "checkpoint", "eps", "artifact_format",
              "grid_cell")
ARTIFACT_ORDER = (None, "saved_model", "onnx", "litert", "litert-int8")
METHOD_ORDER = vocabulary.METHOD_NAMES
CHECKPOINT_ORDER = ("best", "last")
FORMATS = ("md", "csv", "json", "robustbench")
MISSING = "-"


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise UserError(f"cannot read {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path!r} is not valid JSON ({exc})") from None
    try:
        EvalResult.from_json(data)  # JSONs older than the schema version read as version 1
    except ValueError as exc:
        raise UserError(f"{path!r} {exc}") from None
    data.setdefault("_source", os.path.abspath(path))
    return data


def load_evals(paths_or_run_dirs) -> list[dict]:
    """Eval JSONs from files and from run directories (their ``eval_best.json`` and
    ``eval_last.json``). `UserError` for a missing path, a run directory without eval
    files, or a file that is not an eval JSON."""
    if isinstance(paths_or_run_dirs, (str, os.PathLike)):
        paths_or_run_dirs = [paths_or_run_dirs]
    evals = []
    for path in paths_or_run_dirs:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = [os.path.join(path, f"eval_{c}.json") for c in CHECKPOINT_ORDER]
            found = [p for p in found if os.path.isfile(p)]
            if not found:
                raise UserError(f"{path!r} has no eval_best.json or eval_last.json; evaluate it "
                                "with `python -m rslad_tf.evaluate` or train without "
                                "--no-final-eval")
            evals.extend(_load_json(p) for p in found)
        elif os.path.isfile(path):
            evals.append(_load_json(path))
        else:
            raise UserError(f"{path!r} does not exist")
    if not evals:
        raise UserError("no eval JSON given")
    return evals


# --------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
           if len(values) > 1 else 0.0)
    return {"mean": mean, "std": std, "n": len(values)}


def _sort_key(row: dict):
    method = row.get("method") or ""
    checkpoint = row.get("checkpoint") or ""
    return (str(row.get("dataset")), str(row.get("model")), str(row.get("grid_cell") or ""),
            METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER),
            method,
            CHECKPOINT_ORDER.index(checkpoint) if checkpoint in CHECKPOINT_ORDER else 2,
            str(checkpoint), float(row.get("eps") or 0.0),
            ARTIFACT_ORDER.index(row.get("artifact_format"))
            if row.get("artifact_format") in ARTIFACT_ORDER else len(ARTIFACT_ORDER))


def build_table(evals) -> list[dict]:
    """Rows of the paper's table: one per (dataset, model, method, checkpoint, eps, grid
    cell), each column ``{"mean", "std", "n"}`` over the evals of the row that have it
    (None if none).

    Row dict: dataset, model, method, checkpoint, eps, grid_cell, n_runs, train_seeds,
    n_examples, columns {label: stats or None}, black_box (True when any eval has black-box
    numbers), runs (each eval's train_seed and {label: accuracy or None}, in seed order).
    """
    groups: dict[tuple, list[dict]] = {}
    for ev in evals:
        key = tuple(ev.get(f) for f in KEY_FIELDS)
        if key[4] is not None:
            key = key[:4] + (round(float(key[4]), 8),) + key[5:]
        groups.setdefault(key, []).append(ev)
    has_black_box = any(k in ev for ev in evals for _, k in BLACK_BOX_COLUMNS)
    columns = COLUMNS + (BLACK_BOX_COLUMNS if has_black_box else ())
    rows = []
    for key, members in groups.items():
        row = dict(zip(KEY_FIELDS, key))
        row["n_runs"] = len(members)
        row["train_seeds"] = sorted({m.get("train_seed") for m in members
                                     if m.get("train_seed") is not None})
        row["n_examples"] = sorted({m.get("n_examples") for m in members
                                    if m.get("n_examples") is not None})
        row["columns"] = {label: _stats([float(m[k]) for m in members
                                          if m.get(k) is not None])
                          for label, k in columns}
        row["runs"] = sorted(
            ({"train_seed": m.get("train_seed"),
              "columns": {label: None if m.get(k) is None else float(m[k])
                          for label, k in columns}} for m in members),
            key=lambda run: (run["train_seed"] is None, run["train_seed"] or 0))
        row["black_box"] = has_black_box
        # Trainable parameters of the evaluated model (eval JSONs record them since 0.1).
        row["params"] = next((m["params"] for m in members if m.get("params")), None)
        impls = sorted({str(m["autoattack_impl"]) for m in members if m.get("autoattack_impl")})
        row["autoattack_impl"] = ", ".join(impls) or None
        # False when any run's AutoAttack was not the standard version (smoke tests).
        standard = [m["attacks"]["autoattack"].get("standard") for m in members
                    if isinstance((m.get("attacks") or {}).get("autoattack"), dict)]
        row["autoattack_standard"] = (None if not standard
                                      else all(v is not False for v in standard))
        # Exported artifacts: size on disk and CPU latency at batch 1 (median of calls).
        row["size_kib"] = _stats([m["size_bytes"] / 1024 for m in members
                                  if m.get("size_bytes")])
        row["latency_ms"] = _stats([m["latency"]["median_ms"] for m in members
                                    if isinstance(m.get("latency"), dict)])
        row["source"] = "ours"
        rows.append(row)
    rows.sort(key=_sort_key)
    return rows


def with_paper(rows) -> list[dict]:
    """The model card: after the rows of each (dataset, model, method) the paper reports,
    one row with the paper's best-checkpoint numbers (``source`` says whose numbers)."""
    from rslad_tf.evaluation import paper_results

    out, seen = [], set()
    for i, row in enumerate(rows):
        out.append(row)
        key = (row["dataset"], row["model"], row["method"])
        following = rows[i + 1] if i + 1 < len(rows) else None
        last_of_key = following is None or (following["dataset"], following["model"],
                                            following["method"]) != key
        if key in paper_results.PAPER and key not in seen and last_of_key:
            seen.add(key)
            paper = paper_results.PAPER[key]
            out.append({
                "dataset": row["dataset"], "model": row["model"], "method": row["method"],
                "checkpoint": "best", "eps": row["eps"], "n_runs": None, "train_seeds": [],
                "n_examples": [], "black_box": row["black_box"],
                "source": paper_results.SOURCE,
                "columns": {label: ({"mean": paper[label], "std": 0.0, "n": 1}
                                    if label in paper else None) for label in row["columns"]},
            })
    return out


def format_eps(eps) -> str:
    """eps as the papers write it: a short decimal when one is exact (0.2), else "8/255"
    when it is k/255, else four significant digits."""
    if eps is None:
        return MISSING
    eps = float(eps)
    short = f"{eps:.4g}"
    if float(short) == eps:
        return short
    k = eps * 255.0
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{int(round(k))}/255"
    return short


def _cell(stats: dict | None) -> str:
    if stats is None:
        return MISSING
    if stats["n"] > 1:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}"
    return f"{stats['mean']:.2f}"


def _labels(rows) -> list[str]:
    labels = []
    for row in rows:
        for label in row["columns"]:
            if label not in labels:
                labels.append(label)
    return labels or [label for label, _ in COLUMNS]


def _artifact_cells(row: dict, number: str) -> list[str]:
    """[format, size KiB, latency ms] of a row: "keras" for a checkpoint's own row (no
    size or latency measured), the artifact's format otherwise."""
    if row.get("source", "ours") != "ours":
        return [MISSING] * 3
    size, latency = row.get("size_kib"), row.get("latency_ms")
    return [row.get("artifact_format") or "keras",
            number.format(size["mean"]) if size else MISSING,
            number.format(latency["mean"]) if latency else MISSING]


def render(rows, fmt: str = "md") -> str:
    """The table as Markdown ("md"), CSV ("csv", mean and std in separate columns), JSON,
    or RobustBench's model-info fields ("robustbench", `rslad_tf.evaluation.robustbench`)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "robustbench":
        from rslad_tf.evaluation import robustbench

        return robustbench.render(rows, format_eps)
    labels = _labels(rows)
    if fmt == "json":
        return json.dumps(rows, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cells = any(row.get("grid_cell") for row in rows)
        head = (["source", "dataset", "model"] + (["grid_cell"] if cells else [])
                + ["method", "checkpoint", "eps", "n_runs"])
        for label in labels:
            head += [label, f"{label}_std"]
        artifact_rows = any(row.get("artifact_format") for row in rows)
        if artifact_rows:
            head += ["format", "size_kib", "latency_ms"]
        writer.writerow(head)
        for row in rows:
            line = ([row.get("source", "ours"), row["dataset"], row["model"]]
                    + ([row.get("grid_cell") or MISSING] if cells else [])
                    + [row["method"] or MISSING,
                    row["checkpoint"] or MISSING,
                    MISSING if row["eps"] is None else f"{row['eps']:.6g}",
                    MISSING if row["n_runs"] is None else row["n_runs"]])
            for label in labels:
                stats = row["columns"].get(label)
                line += ([MISSING, MISSING] if stats is None else
                         [f"{stats['mean']:.2f}", f"{stats['std']:.2f}"])
            if artifact_rows:
                line += _artifact_cells(row, "{:.4g}")
            writer.writerow(line)
        return buf.getvalue()
    # A "Params" column (trainable parameters) when any row knows its model's size.
    params = any(row.get("params") for row in rows)
    # Exported artifacts: a Format column, and their size and latency at the end.
    artifact_rows = any(row.get("artifact_format") for row in rows)
    # A "Cell" column (a sweep's grid cell) when any row belongs to one.
    any_cell = any(row.get("grid_cell") for row in rows)
    head = (["Source", "Dataset", "Model"] + (["Params"] if params else [])
            + (["Cell"] if any_cell else [])
            + ["Method", "Checkpoint"] + (["Format"] if artifact_rows else [])
            + ["eps", "Runs"] + labels
            + (["Size (KiB)", "Latency (ms)"] if artifact_rows else []))
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * (7 + params + any_cell + artifact_rows)
                            + ["---:"] * (len(labels) + 2 * artifact_rows)) + "|"]
    for row in rows:
        cells = [row.get("source", "ours"), str(row["dataset"]), str(row["model"])]
        if params:
            cells.append(f"{row['params']:,}" if row.get("params") else MISSING)
        if any_cell:
            cells.append(row.get("grid_cell") or MISSING)
        cells += [row["method"] or MISSING, row["checkpoint"] or MISSING]
        if artifact_rows:
            cells.append(_artifact_cells(row, "{:.3g}")[0])
        cells += [format_eps(row["eps"]),
                  MISSING if row["n_runs"] is None else str(row["n_runs"])]
        cells += [_cell(row["columns"].get(label)) for label in labels]
        if artifact_rows:
            cells += _artifact_cells(row, "{:.3g}")[1:]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("Accuracy in %; mean ± sample std over runs when Runs > 1; '-' = not evaluated. "
            "Rows marked 'ours' are measured by this toolkit; 'paper' rows are the published "
            "best-checkpoint numbers, for comparison.")
    return "\n".join(lines) + "\n\n" + note + "\n"


def render_runs(rows) -> str:
    """Every run of the table's rows as a Markdown table, one line per eval (its training
    seed, its own numbers): what the means and spreads of `render` are made of."""
    labels = _labels(rows)
    ours = [row for row in rows if row.get("source", "ours") == "ours" and row.get("runs")]
    any_cell = any(row.get("grid_cell") for row in ours)
    head = (["Dataset", "Model"] + (["Cell"] if any_cell else [])
            + ["Method", "Checkpoint", "eps", "Seed"] + labels)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * (6 + any_cell) + ["---:"] * len(labels)) + "|"]
    for row in ours:
        for run in row["runs"]:
            cells = [str(row["dataset"]), str(row["model"])]
            if any_cell:
                cells.append(row.get("grid_cell") or MISSING)
            cells += [row["method"] or MISSING, row["checkpoint"] or MISSING,
                      format_eps(row["eps"]),
                      MISSING if run["train_seed"] is None else str(run["train_seed"])]
            cells += [MISSING if run["columns"].get(label) is None
                      else f"{run['columns'][label]:.2f}" for label in labels]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row_label(row) -> str:
    parts = [str(row["model"]), row["method"] or "?"]
    if row.get("grid_cell"):
        parts.append(str(row["grid_cell"]))
    if row.get("checkpoint"):
        parts.append(str(row["checkpoint"]))
    return " / ".join(parts)


def plot_clean_vs_aa(rows, path: str) -> str:
    """Scatter of clean against AutoAttack accuracy, one point (with std bars) per row that
    has both. `UserError` when no row has both. Returns ``path``."""
    points = [r for r in rows if r["columns"].get(CLEAN_LABEL) and r["columns"].get(AA_LABEL)
              and r.get("source", "ours") == "ours"]
    if not points:
        raise UserError("no result has both clean and AutoAttack accuracy to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for row in points:
        clean, aa = row["columns"][CLEAN_LABEL], row["columns"][AA_LABEL]
        marker = "o" if row.get("checkpoint") != "last" else "s"
        ax.errorbar(clean["mean"], aa["mean"], xerr=clean["std"], yerr=aa["std"], fmt=marker,
                    capsize=3, label=_row_label(row))
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    datasets = sorted({str(r["dataset"]) for r in points})
    ax.set_title(f"Clean vs AutoAttack accuracy ({', '.join(datasets)})")
    _finish_plot(plt, fig, ax, path)
    return path


def _finish_plot(plt, fig, ax, path: str) -> None:
    """Grid and legend, then the figure written atomically as a PNG at ``path``."""

    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fileio.write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120),
                            suffix=".png")
    plt.close(fig)


def eps_sweep(model, x, y, eps_list, *, attack: str = "pgd_sat", batch_size: int = 256,
              seed: int = 0) -> list[float]:
    """Accuracy (%) of ``model`` under the protocol attack ``attack`` (step scaled with
    eps) at each eps; eps = 0 is clean accuracy."""
    from rslad_tf.attacks import PROTOCOL
    from rslad_tf.evaluation.core import accuracy_under_attack

    if attack not in PROTOCOL:
        raise UserError(f"unknown sweep attack {attack!r}; choose one of {', '.join(PROTOCOL)}")
    accs = []
    for eps in eps_list:
        eps = float(eps)
        if not 0.0 <= eps <= 1.0:
            raise UserError(f"sweep eps must be in [0, 1], got {eps}")
        settings = None if eps == 0.0 else PROTOCOL[attack]
        accs.append(accuracy_under_attack(model, x, y, attack=settings, eps=eps,
                                          batch_size=batch_size, seed=seed))
    return accs


def plot_eps_sweep(model, x, y, eps_list, path: str, *, attack: str = "pgd_sat",
                   batch_size: int = 256, seed: int = 0, title: str | None = None,
                   mark_eps: float | None = None) -> dict:
    """Plot PGD robust accuracy against epsilon and write a PNG at ``path``.

    ``model``: a Keras model, a ``.keras`` path, or a dict {label: model or path} for
    several curves. ``mark_eps``: draw a vertical line there (the threat model's eps).
    Returns {label: [accuracy % per eps]}.
    """
    from rslad_tf.methods import saving

    eps_list = [float(e) for e in eps_list]
    if not eps_list:
        raise UserError("the eps sweep needs at least one eps")
    curves = model if isinstance(model, dict) else {"model": model}
    results = {}
    for label, m in curves.items():
        if isinstance(m, (str, os.PathLike)):
            m = saving.load_model(os.fspath(m), what="checkpoint")
        from rslad_tf.transforms.precision import ensure_float32

        results[label] = eps_sweep(ensure_float32(m), x, y, eps_list, attack=attack,
                                   batch_size=batch_size, seed=seed)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for label, accs in results.items():
        ax.plot(eps_list, accs, marker="o", label=label)
    if mark_eps is not None:
        ax.axvline(mark_eps, color="grey", linestyle="--", linewidth=1,
                   label=f"threat model eps {mark_eps:.4g}")
    ax.set_xlabel("epsilon (L-inf)")
    ax.set_ylabel(f"accuracy under {attack.upper()} (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or f"Robust accuracy against epsilon ({len(x)} test points)",
                 fontsize=10)
    _finish_plot(plt, fig, ax, path)
    return results


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m rslad_tf.report",
        description="Paper-style table (and plots) from run directories or eval JSON files.")
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON",
                        help="run directories (their eval_best/eval_last.json) or eval JSONs")
    parser.add_argument("--format", default="md", choices=FORMATS,
                        help="table format; robustbench: one RobustBench model-info JSON "
                             "object per row (clean_acc, autoattack_acc, eps, ...)")
    parser.add_argument("--out", help="write the table to this file (default: print it)")
    parser.add_argument("--plot-dir", help="write clean_vs_aa.png and, for run directories, "
                                           "eps_sweep.png (a PGD sweep of best checkpoints)")
    parser.add_argument("--sweep-n-examples", type=int, default=500,
                        help="test points of the eps sweep (default 500)")
    parser.add_argument("--sweep-eps", help="comma-separated eps values of the sweep "
                                            "(default: 0 to 1.5 x the run's eps in 7 steps)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the eps sweep plot")
    parser.add_argument("--no-paper", action="store_true",
                        help="leave out the paper's numbers (the model card rows)")
    return parser


def _sweep_runs(run_dirs, plot_dir, args, log) -> str | None:
    """The eps sweep of each run's best checkpoint on its own test set (one dataset)."""
    configs = []
    for run_dir in run_dirs:
        ckpt = os.path.join(run_dir, "checkpoints", "best.keras")
        config_path = os.path.join(run_dir, "config.json")
        if os.path.isfile(ckpt) and os.path.isfile(config_path):
            with open(config_path) as f:
                configs.append((run_dir, ckpt, json.load(f)))
    if not configs:
        log("eps sweep skipped: no run directory with config.json and checkpoints/best.keras")
        return None
    datasets = {c["dataset"] for _, _, c in configs}
    if len(datasets) > 1:
        log(f"eps sweep skipped: runs of several datasets ({', '.join(sorted(datasets))})")
        return None
    from rslad_tf.data import load_numpy, spec

    config = configs[0][2]
    base_eps = float(config.get("epsilon") or spec(config["dataset"]).epsilon)
    if args.sweep_eps:
        try:
            eps_list = [float(e) for e in args.sweep_eps.split(",") if e.strip()]
        except ValueError:
            raise UserError(f"--sweep-eps must be comma-separated numbers, got "
                            f"{args.sweep_eps!r}") from None
    else:
        eps_list = [base_eps * f for f in (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)]
    eps_list = [min(e, 1.0) for e in eps_list]
    x, y = load_numpy(config["dataset"], "test", config.get("data_dir"))
    x, y = x[:args.sweep_n_examples], y[:args.sweep_n_examples]
    curves = {}
    for run_dir, ckpt, cfg in configs:
        label = f"{cfg.get('model')} / {cfg.get('method')} / seed {cfg.get('seed')}"
        if label in curves:
            label += f" ({os.path.basename(os.path.normpath(run_dir))})"
        curves[label] = ckpt
    path = os.path.join(plot_dir, "eps_sweep.png")
    plot_eps_sweep(curves, x, y, eps_list, path, mark_eps=base_eps,
                   title=f"PGD-20 (step eps/4) vs epsilon: {config['dataset']}, best "
                         f"checkpoints, {len(x)} points")
    return path


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.sweep_n_examples <= 0:
        raise UserError(f"--sweep-n-examples must be positive, got {args.sweep_n_examples}")
    # Results are never overwritten: refuse before any work.
    targets = [("--out", args.out)] if args.out else []
    if args.plot_dir:
        targets += [("--plot-dir", os.path.join(args.plot_dir, name))
                    for name in ("clean_vs_aa.png", "eps_sweep.png")]
    for option, path in targets:
        fileio.refuse_existing(path, option)
    evals = load_evals(args.inputs)
    rows = build_table(evals)
    text = render(rows if args.no_paper else with_paper(rows), args.format)

    if args.out:
        fileio.write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    if args.plot_dir:
        def log(message):
            print(message, file=sys.stderr)

        os.makedirs(args.plot_dir, exist_ok=True)
        try:
            written = plot_clean_vs_aa(rows, os.path.join(args.plot_dir, "clean_vs_aa.png"))
            log(f"wrote {written}")
        except UserError as exc:
            log(f"clean vs AA plot skipped: {exc}")
        run_dirs = [p for p in args.inputs if os.path.isdir(p)]
        if not args.no_sweep and run_dirs:
            from rslad_tf.common import runtime

            runtime.configure()
            written = _sweep_runs(run_dirs, args.plot_dir, args, log)
            if written:
                log(f"wrote {written}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
