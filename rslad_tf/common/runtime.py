"""Process-wide TensorFlow settings for the entry points."""

from __future__ import annotations

import os

SHARD_CHOICES = "auto or a positive integer"


def parse_attack_shards(value) -> int | str:
    """``"auto"`` or a positive integer, from a command-line string (ValueError otherwise)."""
    if value in (None, "auto"):
        return "auto"
    try:
        shards = int(value)
    except (TypeError, ValueError):
        shards = 0
    if shards < 1 or str(value).strip() != str(shards):
        raise ValueError(f"attack shards must be {SHARD_CHOICES}, got {value!r}")
    return shards


def add_attack_shards_argument(parser, what: str, default: str = "auto") -> None:
    """The ``--attack-shards {auto,N}`` option of a command line; ``what`` says what runs
    N at a time."""
    parser.add_argument("--attack-shards", default=default, metavar="{auto,N}",
                        help=f"{what}, one per group of CPU cores (same results; auto: 2 on a "
                             f"machine without a GPU, else 1; default {default})")


def attack_shards_from(args) -> int | str:
    """The parsed ``--attack-shards`` of `add_attack_shards_argument` (UserError if bad)."""
    from rslad_tf.common.errors import UserError

    try:
        return parse_attack_shards(args.attack_shards)
    except ValueError as exc:
        raise UserError(f"--attack-shards: {exc}") from None


def cores(threads: int | None = None) -> int:
    """The cores to use: ``threads``, else ``RSLAD_TF_THREADS``, else all of the machine's."""
    return threads or int(os.environ.get("RSLAD_TF_THREADS", "0")) or os.cpu_count() or 1


def thread_pools(attack_shards: int, threads: int | None = None) -> tuple[int, int]:
    """(intra-op, inter-op) pool sizes for ``attack_shards`` (see `configure`)."""
    n = cores(threads)
    if attack_shards > 1:
        return max(1, n // attack_shards), attack_shards
    return n, (1 if n <= 2 else 2)


def configure(threads: int | None = None, attack_shards: int | str = 1) -> int:
    """Import TensorFlow without its start-up lines (`rslad_tf.common.quiet`) and size its thread
    pools to the machine; returns the number of attack shards in effect.

    Oversubscribed thread pools make CPU runs many times slower on small machines;
    ``RSLAD_TF_THREADS`` (or ``threads``) is the number of cores to use.

    ``attack_shards``: PGD cuts each batch into this many pieces that run at the same time
    (`rslad_tf.attacks.engine.pgd_graph`); the cores are then split between them: inter-op
    pool = shards, intra-op pool = cores // shards. "auto" is 2 on a machine without a GPU
    and with at least 2 cores (the small convolutions of a PGD step use two cores poorly
    through intra-op threads: docs/speed.md), else 1. With 1: intra-op = cores, inter-op
    1-2. If TensorFlow is already initialised the pools cannot change, and shards are 1
    unless the existing inter-op pool can run them.

    The shards themselves change no result; the smaller intra-op pool can change the
    rounding of some CPU kernels, as any other thread count can.
    """
    from rslad_tf.common.quiet import import_tensorflow

    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if attack_shards == "auto":
        attack_shards = 2 if not gpus and cores(threads) >= 2 else 1
    attack_shards = resolve_shards(int(attack_shards))
    # Let a torch-backend child process (reference AutoAttack) share the GPU.
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    intra, inter = thread_pools(attack_shards, threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        # Already initialised in this process: keep what is set. Shards that the inter-op
        # pool cannot run side by side would only queue, so fall back to one.
        current = tf.config.threading.get_inter_op_parallelism_threads()
        if current and current < attack_shards:
            attack_shards = 1
    set_shards(attack_shards)
    return attack_shards


# The process-wide number of attack shards, read by the PGD engine
# (`rslad_tf.attacks.engine.pgd_graph`) when a call does not pass one.
_shards_default = 1


def set_shards(shards: int) -> None:
    """Process-wide default of ``pgd_graph(..., shards=None)`` (see `pgd_graph`); set by
    `configure` together with the thread pools that run the shards."""
    global _shards_default
    _shards_default = _valid_shards(shards)


def resolve_shards(shards=None) -> int:
    return _shards_default if shards is None else _valid_shards(shards)


def _valid_shards(shards) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"attack shards must be a positive integer, got {shards!r}")
    return shards
