"""Named experiments: typed configurations with the paper's (or the demo's) settings.

A preset is a `TrainConfig`: the fields that define the experiment (dataset, model,
method, schedule, threat model, seed) and, nested in ``runtime``, the `RuntimeOptions`
that only say how it runs (speed paths, file locations, mid-epoch saves). The command line
overrides fields of it; the resolved configuration is written to ``config.json`` next to
the results as one flat object (runtime options by their own names), the shape every
earlier version wrote and read. Every difference between methods (attack start,
BatchNorm mode, reduction, temperature) is a field, never a flag combination.

The presets are tables of values (``_PRESETS``, filled below from the per-dataset and
per-method tables), turned into a fresh `TrainConfig` by `get`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

from rslad_tf.common.errors import UserError
from rslad_tf.common.vocabulary import DISTILLATION_METHODS, METHOD_NAMES, TEACHER_CACHE_METHODS

JIT_COMPILE_CHOICES = ("auto", True, False)
MIXED_PRECISION_CHOICES = ("off", "bfloat16", "float16")
DEVICE_DATA_CHOICES = ("auto", "on", "off")


class PresetError(UserError, ValueError):
    """Unknown preset name, an unknown configuration field or an invalid override."""


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How a run executes, not what it computes: none of these changes the experiment
    (the speed paths are exact or change float rounding only; docs/speed.md)."""

    data_dir: str | None = None  # local dataset files (CIFAR archives / TFDS directory)
    # The teacher file of a distillation run (else found from ``teacher_preset``).
    teacher_path: str | None = None
    save_every_steps: int | None = None  # resumable state mid-epoch too (None: per epoch)
    deterministic: bool = False  # TensorFlow deterministic ops (bit-exact resume on CPU)
    # Speed options (docs/speed.md). The defaults keep the reference numerics; device_data
    # never changes them, the others change float rounding at most (mixed precision more).
    jit_compile: bool | str = "auto"  # XLA for the training step: "auto" (GPU only), True, False
    mixed_precision: str = "off"  # student compute dtype: "off", "bfloat16", "float16"
    device_data: str = "auto"  # training set on the device: "auto" (if it fits), "on", "off"
    teacher_cache: bool = False  # reuse T(x) per (image, crop, flip) (ARD, IAD, RSLAD)
    fold_attack_bn: bool = False  # training attack with BatchNorm folded into the convs

    def validate(self) -> None:
        """Raise `PresetError` with one line for an impossible option."""
        if self.save_every_steps is not None and self.save_every_steps <= 0:
            raise PresetError(f"--save-every-steps must be positive, got {self.save_every_steps}")
        if self.jit_compile not in JIT_COMPILE_CHOICES:
            raise PresetError(f"jit_compile must be 'auto', True or False, "
                              f"got {self.jit_compile!r}")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise PresetError(f"mixed_precision must be one of "
                              f"{', '.join(MIXED_PRECISION_CHOICES)}, got {self.mixed_precision!r}")
        if self.device_data not in DEVICE_DATA_CHOICES:
            raise PresetError(f"device_data must be one of {', '.join(DEVICE_DATA_CHOICES)}, "
                              f"got {self.device_data!r}")


RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(RuntimeOptions))


# Experiment fields added after the first release, with the default that keeps
# `TrainConfig.experiment_id` of older configurations unchanged.
_ADDED_FIELD_DEFAULTS = {"validation_fraction": 0.0}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Epoch numbers count from 0.

    The fields here define the experiment; ``runtime`` holds the options that do not.
    Change either with `replace`, which takes the flat field names of both."""

    preset: str
    dataset: str
    model: str
    method: str
    # Keyword arguments of the model's builder (e.g. {"width": 16}) and of the method's
    # class (e.g. {"beta": 6.0}); `rslad_tf.config.overrides` checks the names.
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    method_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Distillation: the preset whose run directory provides the teacher, and how to get
    # the teacher when none is found (e.g. the converter command for a paper teacher that
    # exists only as a PyTorch file).
    teacher_preset: str | None = None
    teacher_hint: str | None = None
    # Optimisation (docs/paper.md section 1: SGD 0.1, momentum 0.9, wd 2e-4, batch 128).
    epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_milestones: tuple = (215, 260, 285)
    lr_gamma: float = 0.1
    # Training attack (8/255, 2/255, 10 steps for CIFAR).
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    attack_steps: int = 10
    # Checkpoint selection as in the RSLAD reference: PGD-20 (CE, uniform start, step
    # 0.003 at 8/255) on the test set every `eval_every` epochs before the first LR
    # milestone and every epoch after it; 0: on the last epoch only (best = last), for runs
    # that keep the last checkpoint. It never changes the training itself.
    eval_every: int = 20
    eval_pgd_steps: int = 20
    eval_n_examples: int | None = None
    # Hold out this fraction of the training images (stratified, fixed split seed,
    # `rslad_tf.data.split_validation`) and use them instead of the test set for the
    # checkpoint selection and the per-epoch accuracies: how hyperparameters are chosen
    # without looking at the test set (docs/study.md). 0: train on every training image.
    validation_fraction: float = 0.0
    seed: int = 0
    max_steps: int | None = None  # cap on steps per epoch (smoke tests)
    # Exponential moving average of the student's weights (None: off), e.g. 0.999: evaluated
    # each selection epoch and saved as checkpoints/ema_{best,last}.keras (docs/methods.md).
    ema_decay: float | None = None
    runtime: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)

    def validate(self) -> None:
        """Raise `PresetError` with one line for an impossible configuration."""
        if self.method not in METHOD_NAMES:
            raise PresetError(f"unknown method {self.method!r}; choose one of: "
                              f"{', '.join(METHOD_NAMES)}")
        if self.epochs <= 0:
            raise PresetError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0:
            raise PresetError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if not 0.0 < self.epsilon <= 1.0:
            raise PresetError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise PresetError(f"--max-steps must be a positive integer, got {self.max_steps}")
        if self.eval_every < 0:
            raise PresetError(f"eval_every must be 0 (the last epoch only) or positive, got "
                              f"{self.eval_every}")
        if self.eval_n_examples is not None and self.eval_n_examples <= 0:
            raise PresetError(f"eval_n_examples must be positive, got {self.eval_n_examples}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise PresetError(f"validation_fraction must be in [0, 1), e.g. 0.2; got "
                              f"{self.validation_fraction}")
        self.runtime.validate()
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise PresetError(f"ema_decay must be in (0, 1), e.g. 0.999; got {self.ema_decay}")
        if self.runtime.teacher_cache and self.method not in TEACHER_CACHE_METHODS:
            raise PresetError(f"--teacher-cache needs a method whose soft labels are the "
                              f"teacher's output on clean images "
                              f"({', '.join(TEACHER_CACHE_METHODS)}), not {self.method!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.method in DISTILLATION_METHODS

    def experiment(self) -> dict[str, Any]:
        """The fields that define the experiment (everything but ``runtime``), as JSON
        values: two runs with equal experiments train the same model."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)
             if f.name != "runtime"}
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def experiment_id(self) -> str:
        """A short digest of `experiment`: equal for runs that differ in runtime only.
        Fields added after the first release leave the digest unchanged at their default,
        so the ids of earlier runs stay what they were."""
        experiment = {k: v for k, v in self.experiment().items()
                      if not (k in _ADDED_FIELD_DEFAULTS and v == _ADDED_FIELD_DEFAULTS[k])}
        text = json.dumps(experiment, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """The flat form written to ``config.json``: the experiment's fields, then the
        runtime options by their own names."""
        return {**self.experiment(), **dataclasses.asdict(self.runtime)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of a flat dict (`to_dict`, a ``config.json`` of any version, a
        preset table); `PresetError` naming the first unknown key and the valid ones."""
        unknown = sorted(set(d) - set(field_names()))
        if unknown:
            raise PresetError(f"unknown configuration field {unknown[0]!r}; valid fields: "
                              f"{', '.join(field_names())}")
        values = {k: v for k, v in d.items() if k not in RUNTIME_FIELDS}
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        runtime = RuntimeOptions(**{k: v for k, v in d.items() if k in RUNTIME_FIELDS})
        return cls(**values, runtime=runtime)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` ({flat field name: value}); runtime options go into
        ``runtime``. `PresetError` for a name that is no field."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise PresetError(f"unknown configuration field {unknown[0]!r}; valid fields: "
                              f"{', '.join(field_names())}")
        runtime = {k: v for k, v in changes.items() if k in RUNTIME_FIELDS}
        rest = {k: v for k, v in changes.items() if k not in RUNTIME_FIELDS}
        if runtime:
            rest["runtime"] = dataclasses.replace(self.runtime, **runtime)
        return dataclasses.replace(self, **rest)


def field_types() -> dict[str, str]:
    """Every settable field by its flat name (the ``config.json`` / ``--set`` key), with
    its annotation as text: the experiment's fields first, then the runtime options."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name != "runtime"}
    kinds.update({f.name: str(f.type) for f in dataclasses.fields(RuntimeOptions)})
    return kinds


def field_names() -> list[str]:
    """The flat field names, in `field_types` order."""
    return list(field_types())


# ---------------------------------------------------------------------------------------
# Per-method settings of their own papers / reference code (docs/paper.md section 2).
_METHOD_DEFAULTS = {
    "natural": {},
    "sat": {"attack_start": "uniform", "attack_batchnorm": "inference"},
    "trades": {"attack_start": "normal", "attack_batchnorm": "inference", "beta": 6.0,
               "reduction": "batchmean"},
    "ard": {"attack_start": "uniform", "attack_batchnorm": "train", "alpha": 1.0,
            "temperature": 30.0, "reduction": "mean"},
    # IAD: the distillation KL "batchmean" (IAD-I.py sums over classes, divides by the batch).
    "iad": {"attack_start": "uniform", "attack_batchnorm": "train", "alpha": 1.0,
            "temperature": 30.0, "reduction": "batchmean", "beta": 0.1, "warmup_epochs": 60},
    "rslad": {"attack_start": "normal", "attack_batchnorm": "inference",
              "adv_weight": 5 / 6, "nat_weight": 1 / 6, "reduction": "mean", "scale": 1.0},
    # AdaAD / AdaIAD (Huang et al. 2023, authors' code; docs/methods.md): the attack start
    # and BatchNorm mode are RSLAD's; the attack's KL target is T(x') instead of T(x).
    # AdaAD: reduction "mean" on CIFAR-10 ("batchmean" on CIFAR-100, set per dataset).
    "adaad": {"attack_start": "normal", "attack_batchnorm": "inference", "alpha": 1.0,
              "reduction": "mean"},
    # AdaIAD: IAD's tau 30, beta 0.1 and 60-epoch warm-up, KLs reduced "batchmean".
    "adaiad": {"attack_start": "normal", "attack_batchnorm": "inference", "temperature": 30.0,
               "beta": 0.1, "warmup_epochs": 60, "reduction": "batchmean"},
}
# IGDM (Lee et al. 2023) is a field of RSLAD and AdaAD: alpha per dataset. CIFAR-10: 1
# (the authors' public code, default and example script); CIFAR-100: 10 (the value this
# project's notes give for the authors' code; not confirmed from the paper's text). E, the
# ramp length, is filled in with the run's epochs by `rslad_tf.training.loop.build_method`.
IGDM_ALPHA = {"cifar10": 1.0, "cifar100": 10.0, "digits": 1.0}
IGDM_BASES = ("rslad", "adaad")

# ---------------------------------------------------------------------------------------
# Digits (8x8 grey), the embedded data of the demo and the study (docs/study.md). eps = 0.2
# (docs/training.md: PGD-20 at 0.2 breaks a naturally trained model while adversarially
# trained ones keep most points); the training step is eps / 4 as in the paper (2/255 at
# 8/255).
from rslad_tf.data.digits import EPSILON as DIGITS_EPSILON  # noqa: E402

# The budget rule, the same for every method, teacher and student: 100 epochs of the whole
# training set at batch 64, the learning rate / 10 at epochs 75 and 90 (RSLAD's 215 and 260
# of 300, rounded to the same fractions); best-checkpoint selection every 17 epochs before
# the first milestone, every epoch after it. 100 epochs is what the embedded study could
# afford for all its runs; the earlier 30 starved the distillation methods (issue 12).
DIGITS_EPOCHS = 100
DIGITS_MILESTONES = (75, 90)
DIGITS_TEACHER_WIDTH = 64
# Width 4 (about 1.2 k parameters): the student size at which the study's screen met the
# paper's conditions (teacher well above the SAT student, whose clean accuracy is not
# saturated); at widths 8 and 16 SAT alone reaches 98-99% clean.
DIGITS_STUDENT_WIDTH = 4
_DIGITS = dict(
    dataset="digits", model="small_cnn", epochs=DIGITS_EPOCHS, batch_size=64,
    learning_rate=0.05, momentum=0.9, weight_decay=2e-4, lr_milestones=DIGITS_MILESTONES,
    epsilon=DIGITS_EPSILON, step_size=DIGITS_EPSILON / 4, attack_steps=10, eval_every=17,
)
# Each method's learning rate, picked from DIGITS_LR_GRID by `python -m
# pipelines.embedded_study run` on the validation split (`validation_fraction` 0.2 of the
# training images; student width 8, eps 0.2, seed 0; the distillation methods from the
# study's strong teacher): the highest validation PGD-20 accuracy at the last epoch, the
# smaller rate on a tie; natural training, not trained for robustness, by clean accuracy.
# The grid's every cell is in docs/study.md ("Learning-rate grid").
DIGITS_LR_GRID = (0.05, 0.15, 0.5)
DIGITS_LEARNING_RATES = {"natural": 0.05, "sat": 0.5, "trades": 0.5, "ard": 0.5,
                         "iad": 0.15, "rslad": 0.5, "adaad": 0.5, "adaiad": 0.15}
# The teacher is not tuned: SAT at the base rate 0.05, width 64 (about 260 k parameters),
# the study's strong teacher. The repository ships the one the study trained
# (pipelines/rslad_pipeline.py, SHIPPED_DIGITS_TEACHER).
DIGITS_TEACHER_METHOD = "sat"
DIGITS_TEACHER_LEARNING_RATE = 0.05
# IAD's and AdaIAD's warm-up: 60 of 200 epochs in the references, the same fraction of 100.
_DIGITS_METHOD_KWARGS = {"iad": {"warmup_epochs": 30}, "adaiad": {"warmup_epochs": 30}}

# ---------------------------------------------------------------------------------------
# The paper's experiments (docs/paper.md sections 1, 2 and 4). Students: ResNet-18 and
# MobileNetV2, CIFAR variants, no input normalisation. Every method keeps its own
# reference's schedule; the RSLAD schedule is the default for natural and SAT students.
CIFAR_DATASETS = ("cifar10", "cifar100")
CIFAR_STUDENT_MODELS = ("resnet18", "mobilenetv2")
_CIFAR = dict(batch_size=128, learning_rate=0.1, momentum=0.9, weight_decay=2e-4,
              epsilon=8 / 255, step_size=2 / 255, attack_steps=10, eval_every=20)
_SCHEDULES = {
    # RSLAD: 300 epochs, lr / 10 at 215, 260, 285.
    "rslad": dict(epochs=300, lr_milestones=(215, 260, 285)),
    "natural": dict(epochs=300, lr_milestones=(215, 260, 285)),
    "sat": dict(epochs=300, lr_milestones=(215, 260, 285)),
    # TRADES (Zhang et al. 2019): 76 epochs, lr / 10 at 75.
    "trades": dict(epochs=76, lr_milestones=(75,)),
    # ARD (Goldblum et al. 2020) and IAD (Zhu et al. 2022): 200 epochs, lr / 10 at 100, 150.
    "ard": dict(epochs=200, lr_milestones=(100, 150)),
    "iad": dict(epochs=200, lr_milestones=(100, 150)),
    # AdaAD / AdaIAD (authors' code): 200 epochs, lr / 10 at 100 and 150, and weight decay
    # 5e-4 where RSLAD uses 2e-4. Their code's default training eps is 16/255 (step 4/255);
    # the presets keep the 8/255 threat model every other method trains and is evaluated at.
    "adaad": dict(epochs=200, lr_milestones=(100, 150), weight_decay=5e-4),
    "adaiad": dict(epochs=200, lr_milestones=(100, 150), weight_decay=5e-4),
}
# Method settings that differ per dataset: the RSLAD reference multiplies each KL by 10
# on CIFAR-100; AdaAD's code reduces "batchmean" there.
_DATASET_METHOD_KWARGS = {
    ("cifar100", "rslad"): {"scale": 10.0},
    ("cifar100", "adaad"): {"reduction": "batchmean"},
}
CIFAR10_TEACHER_PRESET = "cifar10-wrn34-10-trades"
# Where each dataset's distillation presets take their teacher from.
_TEACHER_PRESETS = {"digits": "digits-teacher", "cifar10": CIFAR10_TEACHER_PRESET,
                    "cifar100": None}
_TEACHER_HINTS = {
    "digits": None,
    "cifar10": ("train one with `python -m rslad_tf.train --preset cifar10-wrn34-10-trades`, or "
                "convert the paper's TRADES teacher: `python -m rslad_tf.convert_teacher "
                "model_cifar_wrn.pt --arch wrn34_10 --out teacher.keras`, then pass "
                "--teacher teacher.keras"),
    "cifar100": ("convert the paper's DeepMind teacher: `python -m rslad_tf.convert_teacher "
                 "cifar100_linf_wrn70-16_without.pt --arch wrn70_16 --out teacher.keras` "
                 "(add --normalization cifar10 to reproduce the RSLAD reference's "
                 "normalisation), then pass --teacher teacher.keras"),
}
# The AdaAD paper distils from RobustBench WideResNets (e.g. Chen2021LTD_WRN34_20 on
# CIFAR-10); the presets default to RSLAD's teacher so that methods compare on one teacher.
_ADAAD_TEACHER_HINT = ("; AdaAD's paper used RobustBench WideResNets (e.g. Chen2021LTD_WRN34_20): "
                       "`python -m rslad_tf.convert_teacher FILE.pt --out teacher.keras` reads "
                       "their depth, width and classes from the file")
_HINTED_METHODS = {"adaad": _ADAAD_TEACHER_HINT, "adaiad": _ADAAD_TEACHER_HINT}


def _values(preset: str, method: str, *tables: dict) -> dict:
    """The flat values of one preset: ``tables`` merged in order over the method's
    reference settings (a table's ``method_kwargs`` merges into them)."""
    values = {"preset": preset, "method": method,
              "method_kwargs": dict(_METHOD_DEFAULTS[method])}
    for table in tables:
        table = dict(table)
        values["method_kwargs"].update(table.pop("method_kwargs", {}))
        values.update(table)
    return values


def _student_values(dataset: str, preset: str, method: str, *tables: dict) -> dict:
    """A student preset's values: ``tables`` plus, for a distillation method, where its
    teacher comes from."""
    values = _values(preset, method, *tables,
                     {"method_kwargs": _DATASET_METHOD_KWARGS.get((dataset, method), {})})
    if method in DISTILLATION_METHODS:
        values["teacher_preset"] = _TEACHER_PRESETS[dataset]
        hint = _TEACHER_HINTS[dataset]
        if hint is not None:
            values["teacher_hint"] = hint + _HINTED_METHODS.get(method, "")
    return values


def _with_igdm(values: dict) -> dict:
    """An RSLAD or AdaAD preset's values plus the IGDM term with its dataset's alpha."""
    return dict(values, preset=f"{values['preset']}-igdm",
                method_kwargs=dict(values["method_kwargs"],
                                   igdm_alpha=IGDM_ALPHA[values["dataset"]]))


# Every preset by name: flat `TrainConfig` values.
_PRESETS: dict[str, dict] = {}


def _add(values: dict) -> None:
    if values["preset"] in _PRESETS:
        raise ValueError(f"preset {values['preset']!r} is defined twice")
    _PRESETS[values["preset"]] = values


_add(_values("digits-teacher", DIGITS_TEACHER_METHOD, _DIGITS,
             {"model_kwargs": {"width": DIGITS_TEACHER_WIDTH},
              "learning_rate": DIGITS_TEACHER_LEARNING_RATE}))
for _m in METHOD_NAMES:
    _add(_student_values("digits", f"digits-{_m}", _m, _DIGITS,
                         {"model_kwargs": {"width": DIGITS_STUDENT_WIDTH},
                          "learning_rate": DIGITS_LEARNING_RATES[_m],
                          "method_kwargs": _DIGITS_METHOD_KWARGS.get(_m, {})}))
# The TRADES WideResNet-34-10 teacher of the CIFAR-10 experiments, and the robust ResNet-50
# (SAT) that the black-box transfer attacks are crafted on.
_add(_values(CIFAR10_TEACHER_PRESET, "trades", _CIFAR, _SCHEDULES["trades"],
             {"dataset": "cifar10", "model": "wrn34_10"}))
_add(_values("cifar10-resnet50-sat", "sat", _CIFAR, _SCHEDULES["sat"],
             {"dataset": "cifar10", "model": "resnet50"}))
for _d in CIFAR_DATASETS:
    for _model in CIFAR_STUDENT_MODELS:
        for _m in METHOD_NAMES:
            _add(_student_values(_d, f"{_d}-{_model}-{_m}", _m, _CIFAR, _SCHEDULES[_m],
                                 {"dataset": _d, "model": _model}))
for _name in [n for n in _PRESETS if n.rsplit("-", 1)[-1] in IGDM_BASES]:
    _add(_with_igdm(_PRESETS[_name]))  # e.g. digits-rslad-igdm, cifar10-resnet18-adaad-igdm


def register(config: TrainConfig) -> None:
    """Add ``config`` as the preset ``config.preset``."""
    config.validate()
    _add(config.to_dict())


def available() -> list[str]:
    return sorted(_PRESETS)


def get(name: str) -> TrainConfig:
    """A fresh `TrainConfig` for preset `name`; `PresetError` naming the choices otherwise."""
    if name not in _PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of: {', '.join(available())}")
    return TrainConfig.from_dict(copy.deepcopy(_PRESETS[name]))


def method_defaults(method: str) -> dict:
    """The reference settings of a method (attack start, BN mode, loss hyperparameters)."""
    if method not in _METHOD_DEFAULTS:
        raise PresetError(f"unknown method {method!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return dict(_METHOD_DEFAULTS[method])
