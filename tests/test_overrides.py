"""One override rule for the train command line and the pipeline (`rslad_tf.config.overrides`)."""

import dataclasses

import pytest

from rslad_tf.config import overrides
from rslad_tf.config import presets
from rslad_tf.training import cli as train
from rslad_tf.training.schedule import learning_rate
from rslad_tf.common.errors import UserError
from rslad_tf.config.presets import PresetError


def _cli_config(argv):
    args = train.build_parser().parse_args(argv)
    return train.resolve_config(args)


def _pipeline_config(preset, **kwargs):
    from components.training import apply_overrides

    manifest = {"dataset": presets.get(preset).dataset, "data_dir": None}
    return apply_overrides(presets.get(preset), manifest, **kwargs)


def test_epochs_scale_the_schedule_the_same_way_in_cli_and_pipeline():
    cli = _cli_config(["--preset", "cifar10-resnet18-rslad", "--epochs", "30"])
    pipe = _pipeline_config("cifar10-resnet18-rslad", epochs=30)
    # 215, 260, 285 of 300 -> 22 (21.5 rounds to even), 26, 28 of 30: the LR does decay.
    assert cli.lr_milestones == pipe.lr_milestones == (22, 26, 28)
    assert cli.eval_every == pipe.eval_every == 2
    assert learning_rate(cli, 29) == pytest.approx(0.1 * 0.1 ** 3)
    iad_cli = _cli_config(["--preset", "cifar10-resnet18-iad", "--epochs", "20"])
    iad_pipe = _pipeline_config("cifar10-resnet18-iad", epochs=20)
    assert iad_cli.method_kwargs["warmup_epochs"] == iad_pipe.method_kwargs["warmup_epochs"] == 6
    assert iad_cli.to_dict() == dict(iad_pipe.to_dict(), dataset=iad_cli.dataset)


def test_explicit_fields_are_not_scaled():
    config = _cli_config(["--preset", "cifar10-resnet18-iad", "--epochs", "20",
                          "--set", "lr_milestones=[10,15]",
                          "--set", "method_kwargs.warmup_epochs=3"])
    assert config.lr_milestones == (10, 15) and config.method_kwargs["warmup_epochs"] == 3
    assert config.eval_every == 2  # not given: scaled (20 of 200)
    last_only = presets.get("digits-sat").replace(eval_every=0)
    assert overrides.scale_epochs(last_only, 50).eval_every == 0  # the last epoch only


def test_set_parses_values_and_dotted_keys():
    config = _cli_config(["--preset", "digits-rslad", "--set", "model_kwargs.width=8",
                          "--set", "learning_rate=0.1", "--set", "epsilon=8/255",
                          "--set", "method_kwargs.scale=10", "--set", "deterministic=true"])
    assert config.model_kwargs == {"width": 8}
    assert config.learning_rate == 0.1 and config.runtime.deterministic is True
    assert config.epsilon == pytest.approx(8 / 255)
    # a new epsilon keeps the preset's step / eps ratio
    assert config.step_size / config.epsilon == pytest.approx(0.25)
    assert config.method_kwargs["scale"] == 10.0
    # a new method starts from its reference settings, a new model from no kwargs
    switched = overrides.apply(presets.get("digits-rslad"), {"method": "ard", "model": "resnet18"})
    assert switched.method_kwargs == presets.method_defaults("ard")
    assert switched.model_kwargs == {}


@pytest.mark.parametrize("item,message", [
    ("nonsense", "expected FIELD=VALUE"),
    ("learning_rate=fast", "learning_rate: expected a number, got 'fast'"),
    ("batch_size=1.5", "batch_size: expected an integer"),
    ("bogus=1", "unknown field 'bogus'; choose one of: preset, dataset"),
    ("method=magic", "choose one of: natural, sat"),
    ("lr_milestones=[1,x]", "lr_milestones: expected a list of numbers"),
    ("model_kwargs.depth=3", "small_cnn has no argument 'depth'; choose one of: width"),
    ("method_kwargs.gamma=2", "rslad has no argument 'gamma'; choose one of:"),
    ("epochs=0", "epochs must be a positive integer"),
    ("mixed_precision=fp8", "mixed_precision must be one of off, bfloat16, float16"),
])
def test_bad_overrides_name_the_field_and_the_choices(item, message):
    with pytest.raises(PresetError) as info:
        _cli_config(["--preset", "digits-rslad", "--set", item])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_field_given_twice_is_refused():
    with pytest.raises(UserError, match="both as a flag and with --set"):
        _cli_config(["--preset", "digits-sat", "--epochs", "3", "--set", "epochs=4"])


def test_describe_prints_every_field_in_set_form():
    config = _cli_config(["--preset", "digits-sat", "--set", "model_kwargs.width=8"])
    text = overrides.describe(config)
    assert text.startswith("config: ") and "{" not in text
    for field in overrides.field_names():
        assert field in text
    assert "model_kwargs.width=8" in text and max(map(len, text.splitlines())) <= 100


def test_parse_value():
    assert overrides.parse_value("[1, 2]") == [1, 2]
    assert overrides.parse_value("8/255") == pytest.approx(8 / 255)
    assert overrides.parse_value("False") is False
    assert overrides.parse_value("bfloat16") == "bfloat16"


# -- the typed configuration: experiment fields, runtime options, strict keys ----------
# The keys of config.json as every earlier version wrote them (one flat object).
FLAT_KEYS_OF_EARLIER_VERSIONS = {
    "preset", "dataset", "model", "method", "model_kwargs", "method_kwargs",
    "teacher_preset", "teacher_path", "teacher_hint", "epochs", "batch_size",
    "learning_rate", "momentum", "weight_decay", "lr_milestones", "lr_gamma", "epsilon",
    "step_size", "attack_steps", "eval_every", "eval_pgd_steps", "eval_n_examples", "seed",
    "data_dir", "max_steps", "save_every_steps", "deterministic", "jit_compile",
    "mixed_precision", "device_data", "teacher_cache", "fold_attack_bn", "ema_decay"}


def test_config_json_stays_one_flat_object_that_reads_back():
    config = presets.get("digits-rslad").replace(jit_compile=False, data_dir="/data",
                                                 learning_rate=0.2)
    flat = config.to_dict()
    assert set(flat) == FLAT_KEYS_OF_EARLIER_VERSIONS | {"validation_fraction"}
    assert flat["jit_compile"] is False and flat["data_dir"] == "/data"
    assert flat["learning_rate"] == 0.2 and flat["lr_milestones"] == [75, 90]
    assert presets.TrainConfig.from_dict(flat) == config
    # A file of an earlier version may lack fields added since: they take their defaults.
    older = {k: v for k, v in flat.items()
             if k not in ("ema_decay", "fold_attack_bn", "validation_fraction")}
    assert presets.TrainConfig.from_dict(older) == config


def test_unknown_keys_are_refused_in_one_line_naming_the_valid_ones():
    flat = dict(presets.get("digits-sat").to_dict(), learning_rat=0.1)
    with pytest.raises(PresetError) as info:
        presets.TrainConfig.from_dict(flat)
    message = str(info.value)
    assert "'learning_rat'" in message and "\n" not in message
    assert "valid fields: preset, dataset" in message and "jit_compile" in message
    with pytest.raises(PresetError, match="unknown configuration field 'jit'"):
        presets.get("digits-sat").replace(jit=True)
    assert isinstance(info.value, UserError)


def test_runtime_options_do_not_change_the_experiment():
    config = presets.get("digits-rslad")
    faster = config.replace(jit_compile=True, mixed_precision="bfloat16", device_data="on",
                            teacher_cache=True, fold_attack_bn=True, data_dir="/elsewhere",
                            teacher_path="/t.keras", save_every_steps=5, deterministic=True)
    assert faster.runtime != config.runtime and faster.runtime.teacher_cache is True
    assert faster.experiment() == config.experiment()
    assert faster.experiment_id() == config.experiment_id()
    for change in ({"seed": 1}, {"learning_rate": 0.1}, {"model_kwargs": {"width": 8}},
                   {"ema_decay": 0.99}, {"max_steps": 3}, {"validation_fraction": 0.2}):
        assert config.replace(**change).experiment_id() != config.experiment_id(), change
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.runtime.jit_compile = True
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_runtime_options_are_set_by_their_own_names_through_apply():
    config = overrides.apply(presets.get("digits-sat"),
                             {"jit_compile": True, "device_data": "off", "epochs": 3})
    assert config.runtime.jit_compile is True and config.runtime.device_data == "off"
    assert config.epochs == 3
    with pytest.raises(PresetError, match="device_data must be one of auto, on, off"):
        overrides.apply(presets.get("digits-sat"), {"device_data": "sometimes"})


def test_pipeline_and_cli_change_a_method_the_same_way():
    cli = _cli_config(["--preset", "digits-teacher", "--method", "sat"])
    pipe = _pipeline_config("digits-teacher", method="sat")
    assert cli.method == pipe.method == "sat"
    assert cli.method_kwargs == pipe.method_kwargs == presets.method_defaults("sat")


def test_fields_added_later_keep_the_ids_of_earlier_configurations():
    """`validation_fraction` came after runs had been recorded: at its default the id is
    the digest of the experiment without it, as before the field existed."""
    import hashlib
    import json

    config = presets.get("digits-rslad")
    before = {k: v for k, v in config.experiment().items() if k != "validation_fraction"}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode())
    assert config.experiment_id() == digest.hexdigest()[:12]
    assert config.replace(validation_fraction=0.2).experiment_id() != config.experiment_id()
    with pytest.raises(PresetError, match="validation_fraction must be in"):
        config.replace(validation_fraction=1.0).validate()
