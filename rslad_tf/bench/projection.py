"""Hours of the paper's 300-epoch CIFAR-10 RSLAD run, projected from measured rates (the
GPU profile's report line)."""

from __future__ import annotations

# The paper's CIFAR-10 schedule.
PROJECTION_EPOCHS = 300
PROJECTION_TRAIN_SIZE = 50000
PROJECTION_TEST_SIZE = 10000


def eval_epochs(epochs: int = PROJECTION_EPOCHS) -> int:
    """How many of `epochs` epochs of the CIFAR-10 RSLAD preset run the selection PGD-20."""
    from rslad_tf.config import presets
    from rslad_tf.training.schedule import is_eval_epoch

    config = presets.get("cifar10-resnet18-rslad").replace(epochs=epochs)
    return sum(1 for e in range(epochs) if is_eval_epoch(config, e))


def project_run(profile, reference_rate, cold_rate, warm_rate, variants, buckets) -> dict:
    """Hours of the paper's 300-epoch CIFAR-10 RSLAD training (no evaluation) from measured
    step rates: the reference; the optimised one with the cache, whose expected miss rate
    in epoch e is (1 - 1/variants)^e (each epoch draws one random variant per image) and
    whose teacher runs on the misses rounded up to a bucket (1/buckets of the batch)."""
    steps_per_epoch = -(-PROJECTION_TRAIN_SIZE // profile.batch_size)
    b = profile.batch_size
    t_cold, t_warm = b / cold_rate, b / warm_rate
    total = 0.0
    for epoch in range(PROJECTION_EPOCHS):
        miss = (1.0 - 1.0 / variants) ** epoch
        chunk = -(-b // buckets)
        rows = min(b, -(-int(round(miss * b)) // chunk) * chunk) / b
        total += steps_per_epoch * (t_warm + rows * (t_cold - t_warm))
    reference = PROJECTION_EPOCHS * steps_per_epoch * b / reference_rate
    return {"epochs": PROJECTION_EPOCHS, "train_hours_reference": reference / 3600,
            "train_hours_optimised": total / 3600}


def project_eval(eval_ref_rate, eval_opt_rate) -> dict:
    """Hours of the checkpoint-selection evaluations (PGD-20 on the 10,000 test images at
    the reference's evaluation epochs) at the measured attack rates."""
    epochs = eval_epochs()
    n = epochs * PROJECTION_TEST_SIZE
    return {"eval_epochs": epochs, "eval_hours_reference": n / eval_ref_rate / 3600,
            "eval_hours_optimised": n / eval_opt_rate / 3600}

