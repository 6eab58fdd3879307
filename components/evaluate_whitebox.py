"""evaluate_whitebox: the white-box suite (clean, FGSM, PGD_SAT, PGD_TRADES, CW_inf,
AutoAttack) on a Model artifact: the eval JSON as an artifact and the accuracies as
kfp Metrics."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.common import WHITEBOX_ATTACKS, component

DEFAULT_ATTACKS = ",".join(WHITEBOX_ATTACKS)


def evaluate_whitebox_fn(dataset_dir: str, model_dir: str, out_file: str, *,
                         attacks: str = DEFAULT_ATTACKS, n_examples: int = 0,
                         epsilon: float = 0.0, batch_size: int = 256, seed: int = 0,
                         autoattack_options: str = "", autoattack_impl: str = "",
                         recorded_autoattack: str = "", recorded_autoattack_sha256: str = "",
                         log=print) -> dict:
    """Evaluate the model of ``model_dir``; writes and returns the eval JSON.

    ``attacks``: comma-separated subset of the white-box columns. ``n_examples``: the
    first N test images (0: all). ``epsilon``: 0 for the dataset's threat model.
    ``autoattack_options``: JSON overrides of the reference AutoAttack settings, for smoke
    tests ("" = the standard version); the eval JSON records them. ``autoattack_impl``:
    "native" (TensorFlow, in this process) or "reference" (pyautoattack under Keras' torch
    backend); "" = the evaluation suite's default. ``recorded_autoattack``: the URI of an
    eval JSON recorded for this same model file (e.g. with ``python -m rslad_tf.evaluate``),
    pinned by ``recorded_autoattack_sha256`` when given: its AutoAttack column is taken
    instead of running AutoAttack when it applies (`rslad_tf.evaluation.recorded`: same
    file, same settings, the other columns measured now agree with it); "" = run it.
    """
    from components.evaluation import run_evaluation

    return run_evaluation(dataset_dir, model_dir, out_file, attacks=attacks,
                          allowed=WHITEBOX_ATTACKS, n_examples=n_examples, epsilon=epsilon,
                          batch_size=batch_size, seed=seed,
                          reference_options=autoattack_options,
                          autoattack_impl=autoattack_impl,
                          recorded_autoattack=recorded_autoattack,
                          recorded_autoattack_sha256=recorded_autoattack_sha256, log=log)


@component
def evaluate_whitebox(data: Input[Dataset], model: Input[Model], results: Output[Artifact],
                      metrics: Output[Metrics],
                      attacks: str = "clean,fgsm,pgd_sat,pgd_trades,cw_inf,autoattack",
                      n_examples: int = 0, epsilon: float = 0.0, batch_size: int = 256,
                      seed: int = 0, autoattack_options: str = "", autoattack_impl: str = "",
                      recorded_autoattack: str = "", recorded_autoattack_sha256: str = "",
                      device_type: str = "", device_count: int = 0):
    """White-box robustness of one model: eval JSON + Metrics."""
    from components.common import configure_runtime, report_device
    from components.evaluate_whitebox import evaluate_whitebox_fn
    from components.evaluation import publish

    # "auto": 2 attack shards on a CPU machine with 2 or more cores to use (same results,
    # docs/speed.md), 1 under a GPU or a 1-thread step of a local run.
    configure_runtime(attack_shards="auto")
    report_device(device_type, device_count)
    result = evaluate_whitebox_fn(data.path, model.path, results.path, attacks=attacks,
                                  n_examples=n_examples, epsilon=epsilon,
                                  batch_size=batch_size, seed=seed,
                                  autoattack_options=autoattack_options,
                                  autoattack_impl=autoattack_impl,
                                  recorded_autoattack=recorded_autoattack,
                                  recorded_autoattack_sha256=recorded_autoattack_sha256)
    publish(result, results, metrics, "whitebox")
