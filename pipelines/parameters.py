"""The pipeline's run parameters as the compiled pipeline declares them: listing them with
type and default, and turning ``--param NAME=VALUE`` texts into values of the declared
type before anything is sent to a cluster.

Everything is read from the root ``inputDefinitions`` of a compiled pipeline spec (the
dict of the YAML that ``compile`` writes), so the list cannot drift from the pipeline.
"""

from __future__ import annotations

import difflib
import json
import math

import yaml

from rslad_tf.common.errors import UserError
from rslad_tf.common.vocabulary import METHOD_NAMES

# kfp IR parameter types -> the word shown to users.
TYPE_NAMES = {"STRING": "string", "NUMBER_INTEGER": "integer", "NUMBER_DOUBLE": "float",
              "BOOLEAN": "boolean", "LIST": "list", "STRUCT": "object"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
EXAMPLES = {"STRING": "cifar10", "NUMBER_INTEGER": "3", "NUMBER_DOUBLE": "0.031",
            "BOOLEAN": "true", "LIST": '\'["sat","rslad"]\' or sat,rslad', "STRUCT": '{"k": 1}'}


def load_spec(path: str) -> dict:
    """The pipeline spec (first YAML document) of a compiled pipeline file."""
    if not path.endswith((".yaml", ".yml")):
        raise UserError(f"--package {path!r}: expected a pipeline YAML written by `compile` "
                        "(.yaml or .yml)")
    try:
        with open(path) as f:
            # libyaml's loader when present: a compiled pipeline is ~1,300 lines.
            spec = next(iter(yaml.load_all(f, Loader=_LOADER)), None)
    except FileNotFoundError:
        raise UserError(f"pipeline file {path!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise UserError(f"pipeline file {path!r} is not valid YAML ({type(exc).__name__}); "
                        "write it again with `compile`") from None
    if not isinstance(spec, dict) or "root" not in spec:
        raise UserError(f"pipeline file {path!r} is not a compiled pipeline (no 'root'); "
                        "write it with `compile`")
    return spec


def definitions(spec: dict) -> dict:
    """``{name: {"parameterType": ..., "defaultValue": ..., ...}}`` of the pipeline's run
    parameters, in the order the spec lists them."""
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def default_of(definition: dict):
    """The default as the user would type it: kfp stores integer defaults as floats."""
    value = definition.get("defaultValue")
    if definition.get("parameterType") == "NUMBER_INTEGER" and isinstance(value, float) \
            and value.is_integer():
        return int(value)
    return value


def describe(spec: dict) -> str:
    """A table of every run parameter: name, type, default (as JSON)."""
    params = definitions(spec)
    width = max(len(name) for name in params) + 2
    lines = ["pipeline parameters (pass as --param NAME=VALUE; meanings in "
             "pipelines/README.md):", f"  {'NAME':<{width}}{'TYPE':<9}DEFAULT"]
    for name, definition in params.items():
        kind = TYPE_NAMES.get(definition.get("parameterType"), definition.get("parameterType"))
        default = json.dumps(default_of(definition)) if "defaultValue" in definition else "-"
        lines.append(f"  {name:<{width}}{kind:<9}{default}")
    return "\n".join(lines)


def _typed(name: str, text: str, kind: str):
    """``text`` as a value of the IR type ``kind``; UserError naming the parameter."""
    def wrong(why: str = ""):
        return UserError(f"--param {name}={text!r}: {name} is {_article(kind)} "
                         f"{TYPE_NAMES.get(kind, kind)}{why}, e.g. {name}={EXAMPLES[kind]}")

    if kind == "STRING":
        return text  # verbatim: "0123" and '{"n_queries": 10}' stay strings
    if kind == "NUMBER_INTEGER":
        try:
            return int(text.strip())
        except ValueError:
            raise wrong() from None
    if kind == "NUMBER_DOUBLE":
        try:
            value = float(text)
        except ValueError:
            raise wrong() from None
        if not math.isfinite(value):
            raise wrong(" (finite)")
        return value
    if kind == "BOOLEAN":
        if text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        raise wrong(" (true or false)")
    def json_of(python_type, what: str):
        try:
            value = json.loads(text)
        except ValueError:
            raise wrong(f" ({what})") from None
        if not isinstance(value, python_type):
            raise wrong()
        return value

    if kind == "LIST":
        if text.lstrip().startswith("["):
            return json_of(list, "a JSON list")
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "STRUCT":
        return json_of(dict, "a JSON object")
    raise UserError(f"--param {name}: the pipeline declares the unsupported type {kind!r}")


def _article(kind: str) -> str:
    return "an" if TYPE_NAMES.get(kind, kind)[0] in "aeiou" else "a"


def _check_methods(values: list) -> None:
    # `methods` fans out the whole pipeline: a typo would only fail on the cluster.
    for method in values:
        if method not in METHOD_NAMES:
            raise UserError(f"--param methods: unknown method {method!r}; choose from "
                            f"{', '.join(METHOD_NAMES)}")
    if not values:
        raise UserError("--param methods: the list is empty; name at least one method")
    if len(set(values)) != len(values):
        raise UserError(f"--param methods lists a method twice: {values}")


def check_sweep(name: str, value):
    """``seeds`` as integers, and ``grid``'s cells checked (`components.plan_sweep`): a
    bad seed or an unknown grid key is one line here, before a run is created."""
    from components.plan_sweep import parse_grid, parse_seeds

    if name == "seeds":
        return parse_seeds(value) if value else []
    parse_grid(value)
    return value


def check_value(name: str, value) -> None:
    """The checks `parse_param` makes of a parsed value, for values that come as data (a
    study's): methods by name, seeds as integers, grid keys."""
    if name == "methods":
        _check_methods(value)
    if name in ("seeds", "grid"):
        check_sweep(name, value)


def parse_param(text: str, params: dict) -> tuple[str, object]:
    """``NAME=VALUE`` as ``(name, value)``, the value of the type the pipeline declares for
    ``name`` (``params``: `definitions` of the spec). Strings are taken verbatim; lists
    are JSON lists or comma-separated words."""
    name, eq, value = text.partition("=")
    name = name.strip()
    if not eq or not name:
        raise UserError(f"--param {text!r}: expected NAME=VALUE, e.g. --param epochs=3")
    if name not in params and name in ("seeds", "grid"):
        raise UserError(f"--param {name}: this pipeline package was compiled without "
                        "sweeps; compile it with `compile --sweep` (or submit without "
                        "--package)")
    if name not in params:
        close = difflib.get_close_matches(name, params, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"--param {name!r}: unknown pipeline parameter; {hint}"
                        "`python -m pipelines.rslad_pipeline params` lists them")
    parsed = _typed(name, value, params[name].get("parameterType", "STRING"))
    if name == "methods":
        _check_methods(parsed)
    if name in ("seeds", "grid"):
        parsed = check_sweep(name, parsed)
    return name, parsed


def parse_params(texts: list[str], params: dict) -> dict:
    """Every ``--param`` text parsed (`parse_param`); a name given twice is refused."""
    values = {}
    for text in texts:
        name, value = parse_param(text, params)
        if name in values:
            raise UserError(f"--param {name} is given twice; keep one")
        values[name] = value
    return values
