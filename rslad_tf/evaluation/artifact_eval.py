"""The robustness of an exported artifact (`rslad_tf.interop.artifacts`), as an eval JSON.

`python -m rslad_tf.evaluate ARTIFACT --source CKPT [--surrogate S]` calls
`evaluate_artifact`. The JSON has the keys of a checkpoint's eval JSON
(`rslad_tf.evaluation.suite.evaluate`), so the report can put the float model and its artifacts
side by side, plus ``artifact_format``, ``artifact_path``, ``size_bytes``, ``latency`` and
``source_checkpoint``. What each accuracy means for an artifact:

- ``clean``: the artifact on the test images, in its own runtime.
- ``fgsm``, ``pgd_sat``, ``pgd_trades``, ``cw_inf``, ``autoattack``: the protocol's
  white-box adversarial images, crafted on the float checkpoint the artifact was exported
  from (the one PGD engine of `rslad_tf.attacks`, the native AutoAttack), classified by the
  artifact. The artifact has no gradients here (a LiteRT or ONNX runtime); the float
  model is the closest white-box attacker, and what quantisation changes shows as the
  difference from the checkpoint's own column.
- ``transfer_pgd``, ``transfer_cw``: the same crafted on a separately trained surrogate
  (``--surrogate``), as for a checkpoint.
- ``square``: the query-based Square attack (5000 queries, the native implementation in
  `rslad_tf.attacks.autoattack.square`) run on the artifact itself: it only needs its
  outputs, so it attacks exactly what ships.

The gradient-masking checks of `rslad_tf.evaluation.sanity` need the artifact's gradients
and are skipped (the ``sanity`` object says so); run them on the float checkpoint. The
attacks are the suite's own (`rslad_tf.evaluation.suite.evaluate` with the artifact as its
``classifier``); this module adds what only an artifact has.
"""

from __future__ import annotations

import os

from rslad_tf.common.errors import UserError
from rslad_tf.evaluation import suite


def default_attacks(surrogate) -> list[str]:
    """The checkpoint's default suite (white-box, transfer with a surrogate) plus Square on
    the artifact itself."""
    return suite.validate_attacks(None, surrogate) + ["square"]


def evaluate_artifact(path: str, *, source, surrogate=None, dataset: str = "digits",
                      data_dir: str | None = None, attacks=None,
                      n_examples: int | None = None, batch_size: int = 256,
                      eps: float | None = None, seed: int = 0,
                      autoattack_batch_size: int | None = None,
                      autoattack_options: dict | None = None, threads: int = 1,
                      latency_repeats: int = 200, method: str | None = None,
                      model_name: str | None = None, checkpoint: str | None = None,
                      log=None) -> dict:
    """Evaluate the artifact at ``path``; returns its eval JSON (a dict).

    Args:
        source: the float checkpoint the artifact was exported from (a Keras model or a
            ``.keras`` path): the white-box attacks are crafted on it.
        surrogate: a Keras model or ``.keras`` path for the transfer attacks.
        attacks: column keys (`rslad_tf.common.vocabulary.COLUMN_KEYS`); None =
            `default_attacks`.
        autoattack_options: overrides of AutoAttack's and Square's hyper-parameters (smoke
            tests; recorded, and the run is then marked non-standard).
        threads: CPU threads of the LiteRT / ONNX runtime (a SavedModel runs in
            TensorFlow's pool); the latency record says how many were used.
        latency_repeats: timed calls at batch 1 (the median is reported).
        Others as in `rslad_tf.evaluation.suite.evaluate`.
    """
    from rslad_tf.data import check_model_fits, load_numpy, spec
    from rslad_tf.interop import artifacts

    say = log or (lambda *_: None)
    chosen = default_attacks(surrogate) if attacks is None else suite.validate_attacks(
        attacks, surrogate)
    suite.check_numbers(n_examples, batch_size, eps, autoattack_batch_size)
    if int(latency_repeats) <= 0:
        raise UserError(f"--latency-repeats must be positive, got {latency_repeats}")
    data_spec = spec(dataset)
    artifact = artifacts.load(os.fspath(path), threads=threads)
    target = artifacts.ArtifactModel(artifact)
    check_model_fits(target, data_spec, f"artifact {os.fspath(path)!r}", suite.MISMATCH_FIX,
                     require_shapes=False)
    result = suite.evaluate(
        source, classifier=target, dataset=dataset, data_dir=data_dir, attacks=chosen,
        n_examples=n_examples, batch_size=batch_size, eps=eps, seed=seed,
        surrogate=surrogate, autoattack_batch_size=autoattack_batch_size, method=method,
        model_name=model_name, checkpoint=checkpoint, log=log, autoattack="native",
        autoattack_options=autoattack_options,
        subject=f"the {artifact.format} artifact {os.fspath(path)} ({artifact.runtime})")
    result.update(artifact_format=artifact.format,
                  artifact_path=os.path.abspath(os.fspath(path)),
                  source_checkpoint=result["checkpoint_path"] or source.name,
                  size_bytes=artifact.size_bytes)
    first_image = load_numpy(dataset, "test", data_dir)[0][:1]
    result["latency"] = artifacts.latency(artifact, first_image, repeats=int(latency_repeats))
    say(f"  latency at batch 1: {result['latency']['median_ms']:.3f} ms (median of "
        f"{latency_repeats} calls, {artifact.threads} thread(s)); size "
        f"{artifact.size_bytes / 1024:.1f} KiB")
    return result
