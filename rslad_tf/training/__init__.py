"""Training a student or teacher from a configuration:

- `loop`: `train`, one run (setup, then `fit` with the callbacks)
- `callbacks`: the schedule, the non-finite-loss guard, the PGD-20 checkpoint selection
  and the per-epoch record, as Keras callbacks
- `schedule`: the learning rate per epoch and the selection epochs
- `run_dir`: the run directory (config.json, history.csv, the resumable state, the
  teacher lookup)
- `fast_paths`: strategy, mixed precision and the exact fast paths
- `cli`: ``python -m rslad_tf.train``
"""
