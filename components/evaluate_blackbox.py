"""evaluate_blackbox: transfer attacks (PGD-20 and CW_inf crafted on a surrogate model
trained separately in the pipeline) and the query-based Square attack on a Model
artifact: the eval JSON as an artifact and the accuracies as kfp Metrics."""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.common import BLACKBOX_ATTACKS, component

DEFAULT_ATTACKS = ",".join(BLACKBOX_ATTACKS)


def evaluate_blackbox_fn(dataset_dir: str, model_dir: str, surrogate_dir: str, out_file: str,
                         *, attacks: str = DEFAULT_ATTACKS, n_examples: int = 0,
                         epsilon: float = 0.0, batch_size: int = 256, seed: int = 0,
                         square_options: str = "", autoattack_impl: str = "",
                         log=print) -> dict:
    """Evaluate the model of ``model_dir`` against black-box attacks; writes and returns
    the eval JSON. ``surrogate_dir``: the Model artifact the transfer attacks are crafted on
    (it must be another model than the one evaluated). ``square_options``: JSON overrides of
    the reference Square settings, e.g. ``{"n_queries": 1000}`` ("" = the paper's 5000
    queries); the eval JSON records them. ``autoattack_impl``: the Square implementation,
    as for `evaluate_whitebox_fn`.

    The gradient-masking measurements (zero input gradients, PGD accuracy by steps) are the
    white-box step's: they measure the model, not these attacks, and repeating them here
    cost a few seconds per model. The check that needs both steps' columns (a black-box
    attack stronger than every white-box one) is made by the report on the merged row
    (`components.make_report.masking_checks`)."""
    from components.evaluation import run_evaluation

    return run_evaluation(dataset_dir, model_dir, out_file, attacks=attacks,
                          allowed=BLACKBOX_ATTACKS, surrogate_dir=surrogate_dir,
                          n_examples=n_examples, epsilon=epsilon, batch_size=batch_size,
                          seed=seed, reference_options=square_options,
                          options_name="square_options", autoattack_impl=autoattack_impl,
                          sanity_checks=False, log=log)


@component
def evaluate_blackbox(data: Input[Dataset], model: Input[Model], surrogate: Input[Model],
                      results: Output[Artifact], metrics: Output[Metrics],
                      attacks: str = "transfer_pgd,transfer_cw,square", n_examples: int = 0,
                      epsilon: float = 0.0, batch_size: int = 256, seed: int = 0,
                      square_options: str = "", autoattack_impl: str = "",
                      device_type: str = "", device_count: int = 0):
    """Black-box robustness of one model (transfer from the surrogate, Square): eval JSON +
    Metrics."""
    from components.common import configure_runtime, report_device
    from components.evaluate_blackbox import evaluate_blackbox_fn
    from components.evaluation import publish

    # "auto": 2 attack shards on a CPU machine with 2 or more cores to use (same results,
    # docs/speed.md), 1 under a GPU or a 1-thread step of a local run.
    configure_runtime(attack_shards="auto")
    report_device(device_type, device_count)
    result = evaluate_blackbox_fn(data.path, model.path, surrogate.path, results.path,
                                  attacks=attacks, n_examples=n_examples, epsilon=epsilon,
                                  batch_size=batch_size, seed=seed,
                                  square_options=square_options,
                                  autoattack_impl=autoattack_impl)
    publish(result, results, metrics, "blackbox")
