"""One override rule for the train command line and the pipeline (`rslad_tf.config.overrides`)."""

import pytest

from rslad_tf.config import overrides
from rslad_tf.config import presets
from rslad_tf.training import loop as train
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
    assert train.learning_rate(cli, 29) == pytest.approx(0.1 * 0.1 ** 3)
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


def test_set_parses_values_and_dotted_keys():
    config = _cli_config(["--preset", "digits-rslad", "--set", "model_kwargs.width=8",
                          "--set", "learning_rate=0.1", "--set", "epsilon=8/255",
                          "--set", "method_kwargs.scale=10", "--set", "deterministic=true"])
    assert config.model_kwargs == {"width": 8}
    assert config.learning_rate == 0.1 and config.deterministic is True
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
