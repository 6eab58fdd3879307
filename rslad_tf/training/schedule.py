"""The epoch schedule of a run: the learning rate per epoch and the epochs on which the
checkpoint selection evaluates (both pure functions of the configuration)."""

from __future__ import annotations

from rslad_tf.config import presets


def learning_rate(config: presets.TrainConfig, epoch: int) -> float:
    """Step schedule: the base rate times lr_gamma per milestone passed (epochs from 0)."""
    passed = sum(1 for m in config.lr_milestones if epoch >= m)
    return config.learning_rate * config.lr_gamma ** passed


def is_eval_epoch(config: presets.TrainConfig, epoch: int) -> bool:
    """The reference's selection schedule: every `eval_every` epochs before the first LR
    milestone, every epoch from it on, and always the last epoch (only the last one when
    `eval_every` is 0)."""
    if config.eval_every == 0:
        return epoch + 1 == config.epochs
    first_milestone = min(config.lr_milestones) if config.lr_milestones else config.epochs
    return (epoch + 1 >= first_milestone or (epoch + 1) % config.eval_every == 0
            or epoch + 1 == config.epochs)


def steps_per_epoch(config: presets.TrainConfig, num_examples: int) -> int:
    """Batches per epoch: the whole training set (last batch partial), capped by
    ``max_steps``."""
    steps = -(-num_examples // config.batch_size)
    return min(steps, config.max_steps) if config.max_steps else steps
