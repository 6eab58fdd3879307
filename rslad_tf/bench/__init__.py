"""The benchmark, `python -m rslad_tf.bench`: throughput of the RSLAD training step and of
the PGD-20 evaluation attack, reference configuration against the optimised one, side by
side in one run; and, with ``--robustness``, whether the optimised configuration trains as
robust a student.

Reference configuration (what a straightforward port does): float32, no XLA, the teacher
run on every batch, augmentation on the host (a per-image tf.data ``map``), batches copied
from host memory. Optimised configuration: the fast paths that help on the device at hand
(`profiles.OPTIMISED`; measured, see docs/speed.md).

One module per job, top of the package's layers (nothing in the library imports it):

- `profiles`: the workloads (model sizes, data, batch) and the option sets compared;
- `configurations`: one training-step configuration built from a profile and options;
- `workers`: the child processes, one per thread layout, and the parent's handle on them;
- `flops`: analytic FLOP counts of a model and of an RSLAD step;
- `projection`: hours of the paper's 300-epoch CIFAR-10 run from measured rates;
- `run`: the timed run and its printed report;
- `robustness`: the digits training study of the optimised paths' accuracy;
- `cli`: the command line (`__main__` runs it).
"""
