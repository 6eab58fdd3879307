"""plan_sweep: the cells of a sweep, methods x seeds x grid of overrides, one student task
each (the pipeline's ``dsl.ParallelFor`` runs over them).

A grid is a JSON list of override objects whose keys are ``--set`` keys of
`rslad_tf.config.overrides` (``[{"model_kwargs.width": 8}, {"model_kwargs.width": 16}]``);
``""`` is one cell without overrides. Each cell is a dict: ``method``, ``seed``,
``overrides`` (a JSON object as text), ``grid_cell`` (a short stable label such as
``width=8``, "" for no overrides) and ``epsilon`` (the radius its student is evaluated
at: the cell's own ``epsilon`` override, else the pipeline's)."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
import json
import re
from typing import Dict, List

from components.common import component

# Set by the sweep's axes or for the whole pipeline, never by a grid cell.
RESERVED_KEYS = {"method": "the methods parameter", "seed": "the seeds parameter",
                 "dataset": "the dataset parameter", "data_dir": "the data_dir parameter"}
_ENTRY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXAMPLE = 'grid=\'[{"model_kwargs.width": 8}, {"model_kwargs.width": 16}]\''


def _grid_error(message: str):
    from rslad_tf.common.errors import UserError

    return UserError(f"grid: {message}; e.g. {EXAMPLE}")


def check_key(key: str) -> None:
    """``key`` is a ``--set`` key a grid cell may set: a field of the training config or
    ``model_kwargs.NAME`` / ``method_kwargs.NAME``. One-line `UserError` otherwise."""
    from rslad_tf.config import overrides

    if key in RESERVED_KEYS:
        raise _grid_error(f"key {key!r} is not sweepable by the grid (set it with "
                          f"{RESERVED_KEYS[key]})")
    if "." in key:
        field, _, entry = key.partition(".")
        if field not in overrides.DICT_FIELDS or not _ENTRY.fullmatch(entry):
            raise _grid_error(f"unknown key {key!r}: only model_kwargs.NAME and "
                              "method_kwargs.NAME take a dotted key")
        return
    if key not in overrides.field_names():
        import difflib

        close = difflib.get_close_matches(key, overrides.field_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _grid_error(f"unknown key {key!r}{hint}; the keys are the --set keys of "
                          "python -m rslad_tf.train (docs/training.md, Overrides)")


def cell_label(cell_overrides: dict) -> str:
    """``{"model_kwargs.width": 8, "epsilon": 0.3}`` -> ``"epsilon=0.3,width=8"``: keys
    sorted, the dict prefix dropped unless two keys would then read the same."""
    short = [key.rpartition(".")[2] for key in cell_overrides]
    parts = []
    for key in sorted(cell_overrides):
        name = key.rpartition(".")[2]
        value = cell_overrides[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        parts.append(f"{name if short.count(name) == 1 else key}={text}")
    return ",".join(parts)


def parse_grid(text: str) -> List[Dict]:
    """The grid's cells as override dicts (``""`` -> ``[{}]``), every key checked
    (`check_key`) and every label distinct. One-line `UserError` otherwise."""
    text = (text or "").strip()
    if not text:
        return [{}]
    try:
        cells = json.loads(text)
    except ValueError:
        raise _grid_error(f"{text!r} is not JSON") from None
    if not isinstance(cells, list) or not cells:
        raise _grid_error("expected a non-empty JSON list of override objects")
    labels = set()
    for cell in cells:
        if not isinstance(cell, dict):
            raise _grid_error(f"cell {json.dumps(cell)} is not a JSON object")
        for key in cell:
            check_key(key)
        label = cell_label(cell)
        if label in labels:
            raise _grid_error(f"the cell {label or '{}'!r} is listed twice")
        labels.add(label)
    return cells


def parse_seeds(seeds, seed: int = 0) -> List[int]:
    """The training seeds of a sweep: ``seeds`` (non-negative integers, each once), or
    ``[seed]`` when it is empty."""
    from rslad_tf.common.errors import UserError

    values = list(seeds or [])
    if not values:
        return [int(seed)]
    out = []
    for value in values:
        try:
            number = int(value) if not isinstance(value, bool) and float(value) == int(
                float(value)) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0:
            raise UserError(f"seeds: {value!r} is not a non-negative integer; e.g. "
                            "seeds=[0,1,2]")
        out.append(number)
    if len(set(out)) != len(out):
        raise UserError(f"seeds lists a seed twice: {out}")
    return out


def plan_cells_fn(methods, seeds=(), seed: int = 0, grid: str = "",
                  epsilon: float = 0.0) -> List[Dict]:
    """Every cell of methods x seeds x grid, in that nesting order (the grid innermost)."""
    from rslad_tf.common.errors import UserError
    from rslad_tf.common.vocabulary import METHOD_NAMES

    methods = list(methods)
    if not methods:
        raise UserError("methods: the list is empty; name at least one method")
    for method in methods:
        if method not in METHOD_NAMES:
            raise UserError(f"unknown method {method!r}; choose one of: "
                            f"{', '.join(METHOD_NAMES)}")
    grid_cells = parse_grid(grid)
    cells = []
    for method in methods:
        for run_seed in parse_seeds(seeds, seed):
            for overrides in grid_cells:
                cells.append({"method": method, "seed": run_seed,
                              "overrides": json.dumps(overrides, sort_keys=True),
                              "grid_cell": cell_label(overrides),
                              "epsilon": float(overrides.get("epsilon") or epsilon or 0.0)})
    return cells


def check_cells_apply(cells, dataset: str, student_model: str = "") -> None:
    """Apply every cell's overrides to its method's student preset on ``dataset`` (what
    distill_student will do) so that a bad value or an argument the model or method does
    not take is refused in one line before anything trains. Imports TensorFlow when a
    cell sets a dotted key (the model's and method's arguments are read from them)."""
    from rslad_tf.config import presets

    from components.common import parse_model_spec
    from components.training import apply_overrides, student_preset_name

    model_name, _ = parse_model_spec(student_model)
    seen = set()
    for cell in cells:
        key = (cell["method"], cell["overrides"])
        if key in seen:
            continue
        seen.add(key)
        config = presets.get(student_preset_name(dataset, cell["method"], model_name))
        apply_overrides(config, {"dataset": dataset}, model=student_model,
                        seed=cell["seed"], sets=json.loads(cell["overrides"]),
                        what=f"grid cell {cell['grid_cell']!r} ({cell['method']})")


@component
def plan_sweep(methods: List[str], seeds: List[int], seed: int, grid: str, dataset: str,
               student_model: str, epsilon: float) -> List[Dict]:
    """The sweep's cells (methods x seeds x grid), each checked against its preset."""
    from components.common import configure_runtime
    from components.plan_sweep import check_cells_apply, plan_cells_fn

    configure_runtime(tensorflow=False)
    cells = plan_cells_fn(methods, seeds, seed, grid, epsilon)
    check_cells_apply(cells, dataset, student_model)
    for cell in cells:
        print(f"cell: {cell['method']} seed {cell['seed']} {cell['grid_cell'] or '(preset)'}")
    return cells
