"""Changes to a preset: the one function (`apply`) that the train command line and the
pipeline's training steps both use, and the parser of ``--set field=value``.

The rule (docs/training.md, "Overrides"):

- ``method``: a new method starts from that method's reference settings
  (`presets.method_defaults`); ``model``: a new model starts with no keyword arguments.
- ``epochs``: a new epoch budget scales the epoch-based schedule with it, so a short run
  keeps the shape of the long one: every LR milestone, the selection interval
  ``eval_every``, IAD's ``warmup_epochs`` and IGDM's ``igdm_epochs`` (when set) become
  ``max(1, round(e * new / old))``.
- ``epsilon``: a new radius keeps the preset's step / eps ratio (2/255 per 8/255).
- A field given explicitly is never scaled: ``--epochs 30 --set lr_milestones=[20,25]``
  uses the milestones given.
- Dotted keys set one entry of ``model_kwargs`` or ``method_kwargs``
  (``model_kwargs.width=8``, ``method_kwargs.beta=3``), after the resets above.
- The runtime options (`presets.RuntimeOptions`: ``jit_compile``, ``data_dir``, ...) are
  set by their own names, as in ``config.json`` (``jit_compile=true``).

Values are checked against the field types (`presets.field_types`), and the result
against `TrainConfig.validate`; a mistake is one `PresetError` line naming the field and
the choices.
"""

from __future__ import annotations

import json
import re

from rslad_tf.config import presets
from rslad_tf.common import vocabulary
from rslad_tf.config.presets import PresetError, TrainConfig

DICT_FIELDS = ("model_kwargs", "method_kwargs")
# Scaled with a new epoch budget: TrainConfig fields, and method_kwargs entries.
EPOCH_FIELDS = ("lr_milestones", "eval_every")
EPOCH_METHOD_KWARGS = ("warmup_epochs", "igdm_epochs")
# Method constructor arguments that the trainer sets from TrainConfig fields itself.
TRAINER_SET = {"self", "student", "teacher", "epsilon", "step_size", "attack_steps",
               "weight_decay", "augment_padding", "augment_flip", "seed", "kwargs"}


def field_names() -> list[str]:
    """Every key ``--set`` and `apply` take besides the dotted ones (`presets.field_names`)."""
    return presets.field_names()


def parse_value(text: str):
    """A command-line value: JSON (numbers, true/false/null, [lists], {objects}, "strings"),
    Python's True/False/None, a fraction such as ``8/255``, else the text itself."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    words = {"True": True, "False": False, "None": None}
    if text in words:
        return words[text]
    if re.fullmatch(r"\d+(\.\d*)?/\d+(\.\d*)?", text):
        num, den = (float(part) for part in text.split("/"))
        if den:
            return num / den
    return text


def parse_set(items) -> dict:
    """``["model_kwargs.width=8", "learning_rate=0.1"]`` -> ``{"model_kwargs.width": 8,
    "learning_rate": 0.1}``; `PresetError` for an item without ``=``."""
    changes = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise PresetError(f"--set {item!r}: expected FIELD=VALUE, e.g. "
                              "--set learning_rate=0.1 or --set model_kwargs.width=8")
        changes[key] = parse_value(value)
    return changes


def _type_error(key, expected, value):
    return PresetError(f"{key}: expected {expected}, got {value!r}")


def _coerce(key: str, kind: str, value):
    """``value`` as the type ``kind`` (the dataclass annotation, a string) of field ``key``."""
    optional = kind.replace(" ", "").endswith("|None")
    base = kind.replace(" ", "").removesuffix("|None")
    if value is None:
        if optional:
            return None
        raise _type_error(key, f"a value of type {base}", value)
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or float(value) != int(value):
            raise _type_error(key, "an integer", value)
        return int(value)
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, "a number", value)
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise _type_error(key, "true or false", value)
        return value
    if base == "str":
        if not isinstance(value, str):
            raise _type_error(key, "a string", value)
        return value
    if base == "tuple":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise _type_error(key, "a list of numbers, e.g. [100,150]", value)
        return tuple(int(v) if float(v) == int(v) else float(v) for v in value)
    if base.startswith("dict"):
        if not isinstance(value, dict):
            raise _type_error(key, 'a JSON object, e.g. {"width": 8}', value)
        return dict(value)
    return value  # bool | str (jit_compile): checked by RuntimeOptions.validate


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise PresetError(f"{key}: unknown {key} {value!r}; choose one of: "
                          f"{', '.join(map(str, choices))}")


def _model_arguments(model: str) -> list[str]:
    """The keyword arguments the builder of ``model`` takes (besides classes and shape)."""
    import inspect

    from rslad_tf import backends

    backends.import_keras()  # TensorFlow's start-up lines kept quiet (TensorFlow only)
    from rslad_tf import models

    builder = models._REGISTRY[model]
    return [p for p in inspect.signature(builder).parameters
            if p not in ("num_classes", "input_shape", "kwargs")]


def _method_arguments(method: str) -> list[str]:
    """The constructor arguments of ``method``'s class that a config may set."""
    import inspect

    from rslad_tf import backends

    backends.import_keras()
    from rslad_tf.methods import METHODS

    names = set(presets.method_defaults(method))
    for cls in METHODS[method].__mro__:
        if "__init__" in vars(cls) and cls.__module__.startswith("rslad_tf."):
            names.update(inspect.signature(cls.__init__).parameters)
    return sorted(names - TRAINER_SET)


def _set_entry(config: TrainConfig, key: str, value) -> TrainConfig:
    field, _, entry = key.partition(".")
    if field not in DICT_FIELDS or not entry or "." in entry:
        raise PresetError(f"unknown field {key!r}: only model_kwargs.NAME and "
                          "method_kwargs.NAME take a dotted key")
    allowed = (_model_arguments(config.model) if field == "model_kwargs"
               else _method_arguments(config.method))
    if entry not in allowed:
        owner = config.model if field == "model_kwargs" else config.method
        raise PresetError(f"{key}: {owner} has no argument {entry!r}; choose one of: "
                          f"{', '.join(allowed) or '(none)'}")
    return config.replace(**{field: {**getattr(config, field), entry: value}})


def scale_epochs(config: TrainConfig, epochs: int, keep=()) -> TrainConfig:
    """``config`` with ``epochs`` epochs and its epoch-based schedule scaled with it (the
    rule of this module's docstring); fields named in ``keep`` are left as they are."""
    if epochs == config.epochs or config.epochs <= 0:
        return config.replace(epochs=epochs)
    ratio = epochs / config.epochs

    def scale(e):
        return max(1, int(round(e * ratio)))

    changes = {"epochs": epochs}
    if "lr_milestones" not in keep:
        changes["lr_milestones"] = tuple(scale(m) for m in config.lr_milestones)
    if "eval_every" not in keep and config.eval_every:  # 0 (last epoch only) stays 0
        changes["eval_every"] = scale(config.eval_every)
    method_kwargs = dict(config.method_kwargs)
    for name in EPOCH_METHOD_KWARGS:
        if method_kwargs.get(name) is not None and f"method_kwargs.{name}" not in keep:
            method_kwargs[name] = scale(method_kwargs[name])
    changes["method_kwargs"] = method_kwargs
    return config.replace(**changes)


def apply(config: TrainConfig, changes: dict) -> TrainConfig:
    """``config`` with ``changes`` ({field or dotted key: value}; None values are ignored)
    applied by the rule of this module's docstring, validated. `PresetError` otherwise."""
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    kinds = presets.field_types()
    plain = {}
    for key, value in changes.items():
        if "." in key:
            continue
        if key not in kinds:
            raise PresetError(f"unknown field {key!r}; choose one of: "
                              f"{', '.join(field_names())}")
        plain[key] = _coerce(key, kinds[key], value)
    if "method" in plain and plain["method"] != config.method:
        _check_choice("method", plain["method"], vocabulary.METHOD_NAMES)
        config = config.replace(method=plain["method"],
                                method_kwargs=presets.method_defaults(plain["method"]))
    if "model" in plain and plain["model"] != config.model:
        from rslad_tf import backends

        backends.import_keras()
        from rslad_tf import models

        _check_choice("model", plain["model"], models.available())
        config = config.replace(model=plain["model"], model_kwargs={})
    if "dataset" in plain:
        from rslad_tf import data

        _check_choice("dataset", plain["dataset"], data.available())
    if "epochs" in plain:
        if plain["epochs"] <= 0:
            raise PresetError(f"epochs must be a positive integer, got {plain['epochs']}")
        config = scale_epochs(config, plain["epochs"], keep=set(changes))
    if "epsilon" in plain and "step_size" not in plain and plain["epsilon"] != config.epsilon:
        if config.epsilon > 0:
            plain["step_size"] = config.step_size / config.epsilon * plain["epsilon"]
    rest = {k: v for k, v in plain.items() if k not in ("method", "model", "epochs")}
    config = config.replace(**rest)
    for key, value in changes.items():
        if "." in key:
            config = _set_entry(config, key, value)
    try:
        config.validate()
    except PresetError:
        raise
    except ValueError as exc:
        raise PresetError(str(exc)) from None
    return config


def describe(config: TrainConfig, width: int = 96) -> str:
    """The resolved configuration as ``field=value`` pairs wrapped into a few lines, the
    entries of ``model_kwargs`` / ``method_kwargs`` as dotted keys (the ``--set`` form)."""
    pairs = []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            pairs += [f"{key}.{k}={json.dumps(v, default=str)}" for k, v in sorted(value.items())]
        else:
            pairs.append(f"{key}={json.dumps(value, default=str)}")
    lines, line = [], "config:"
    for pair in pairs:
        if len(line) + 1 + len(pair) > width and line != "config:":
            lines.append(line)
            line = "       "
        line += " " + pair
    lines.append(line)
    return "\n".join(lines)
