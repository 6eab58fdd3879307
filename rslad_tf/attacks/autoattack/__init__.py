"""AutoAttack in TensorFlow (Croce & Hein, ICML 2020): the standard version, L-infinity.

The standard version runs four attacks in turn, each only on the points still robust, and
a point counts as robust only if it survives all four:

1. APGD-CE: APGD on cross-entropy, 100 iterations, 1 run (`apgd.apgd`).
2. APGD-T: APGD on the targeted DLR loss, 100 iterations, 9 target classes (`apgd`).
3. FAB-T: the targeted fast adaptive boundary attack, 100 iterations, 9 target classes
   (`fab`).
4. Square: the score-based Square Attack, 5000 queries, p_init 0.8 (`square`).

Threat model: ``||x_adv - x||_inf <= eps`` and x_adv in [0,1]. Written from the three
papers; hyper-parameters are those of the reference implementation's standard version
(``pyautoattack``), and `rslad_tf.evaluation.verify_autoattack` compares the two point by point.

Everything runs in float32 (a mixed-precision model is rebuilt in float32 first), compiled
with ``tf.function`` (under XLA when ``jit_compile`` resolves to True, "auto" = on GPU),
batched, with the model in inference mode: weights and BatchNorm statistics never change.
"""

from __future__ import annotations

import time

import numpy as np

# Both implementations accept the same requests (versions, option keys).
from rslad_tf.attacks.autoattack.request import ATTACK_ORDER_STANDARD, check_request

KNOWN_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
STANDARD = {"n_iter": 100, "n_restarts": 1, "n_queries": 5000, "n_target_classes": 9}
PREFIX = "[autoattack native] "


def resolve(version: str = "standard", attacks=None, options=None) -> tuple[list, dict]:
    """The attacks to run, in order, and the hyper-parameters; ValueError when invalid.

    A "custom" run takes the standard version's hyper-parameters unless ``options``
    override them (the reference's custom version keeps its constructors' defaults
    instead, e.g. 5 restarts of APGD-CE: pass ``n_restarts`` to both to compare)."""
    version = str(version)
    if version == "custom" and attacks and "fab" in attacks:
        raise ValueError("untargeted FAB ('fab') is not implemented natively; use 'fab-t' "
                         "or the reference implementation")
    check_request(version, attacks, options, KNOWN_ATTACKS)
    attacks = list(attacks) if version == "custom" else list(ATTACK_ORDER_STANDARD)
    options = dict(options or {})
    for key, value in options.items():
        if int(value) <= 0:
            raise ValueError(f"AutoAttack option {key} must be positive, got {value}")
    params = dict(STANDARD, **{k: int(v) for k, v in options.items()})
    return attacks, params


def _attack_batch(name, model, x, y, *, eps, params, seed, stream, jit):
    from rslad_tf.attacks.autoattack import apgd, fab, square

    if name == "apgd-ce":
        return apgd.apgd(model, x, y, eps=eps, n_iter=params["n_iter"],
                         n_restarts=params["n_restarts"], loss="ce", seed=seed,
                         stream=stream, jit=jit)
    if name == "apgd-dlr":
        return apgd.apgd(model, x, y, eps=eps, n_iter=params["n_iter"],
                         n_restarts=params["n_restarts"], loss="dlr", seed=seed,
                         stream=stream, jit=jit)
    if name == "apgd-t":
        return apgd.apgd_targeted(model, x, y, eps=eps, n_iter=params["n_iter"],
                                  n_restarts=params["n_restarts"],
                                  n_target_classes=params["n_target_classes"], seed=seed,
                                  stream=stream, jit=jit)
    if name == "fab-t":
        # One run per target class: the reference forces a single restart for FAB-T.
        return fab.fab_targeted(model, x, y, eps=eps, n_iter=params["n_iter"],
                                n_target_classes=params["n_target_classes"], n_restarts=1,
                                seed=seed, stream=stream, jit=jit)
    return square.square(model, x, y, eps=eps, n_queries=params["n_queries"], seed=seed,
                         stream=stream, jit=jit)


def _map_batches(fn, parts, workers: int):
    """``[fn(i, part) for i, part in enumerate(parts)]``, with up to ``workers`` at a time
    (threads: TensorFlow releases the GIL while its ops run)."""
    if workers <= 1 or len(parts) <= 1:
        return [fn(i, part) for i, part in enumerate(parts)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(parts))) as pool:
        return list(pool.map(fn, range(len(parts)), parts))


def run(model, x, y, *, eps: float, seed: int = 0, batch_size: int = 250,
        version: str = "standard", attacks=None, options=None, log=None,
        jit_compile="auto", workers=None) -> dict:
    """Run AutoAttack natively. Returns a dict:

    ``x_adv`` [N,...] float32 (the first adversarial point found for broken points, x for
    the others), ``robust`` [N] bool (correct on x and not broken by any attack),
    ``clean`` [N] bool, ``per_attack`` {attack: [N] bool flags after it}, ``attacks`` (the
    order run), ``seconds`` {attack: s}, ``options`` (the overrides), ``jit_compile``
    (whether XLA was used).

    ``workers``: how many batches run at the same time (None: the process's attack shards,
    `rslad_tf.common.runtime.configure`); the results do not depend on it.
    """
    from rslad_tf.attacks.autoattack import _util
    from rslad_tf.transforms.precision import ensure_float32

    order, params = resolve(version, attacks, options)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"expected images [N, ...] and N labels, got {x.shape} and {y.shape}")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be positive, got {eps}")
    if int(batch_size) <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batch_size = int(batch_size)
    eps = float(eps)
    say = log or (lambda *_: None)
    model = ensure_float32(model)
    jit = _util.use_xla(jit_compile)
    if workers is None:
        from rslad_tf.common.runtime import resolve_shards

        workers = 1 if jit else resolve_shards()

    # The attacks run on a frozen inference copy; verdicts come from the model itself.
    net = _util.inference_view(model, jit)
    clean = np.argmax(_util.predict_logits(model, x, batch_size=batch_size, jit=jit), -1) == y
    robust = clean.copy()
    x_adv = x.copy()
    per_attack, seconds = {}, {}
    say(f"{PREFIX}{version} version, attacks {', '.join(order)}; eps {eps:.5g}, {len(x)} "
        f"points, XLA {'on' if jit else 'off'}; clean accuracy {100.0 * clean.mean():.2f}%")
    for a_index, name in enumerate(order):
        started = time.time()
        idx = np.flatnonzero(robust)

        def attack_part(b_index, part, a_index=a_index, name=name):
            adv, _ = _attack_batch(name, net, x[part], y[part], eps=eps, params=params,
                                   seed=seed, stream=(a_index + 1) * 100_000 + b_index,
                                   jit=jit)
            # The verdict is this model's classification of the returned points.
            pred = np.argmax(_util.predict_logits(model, adv, batch_size=batch_size, jit=jit),
                             -1)
            return part, adv, pred

        parts = [idx[start:start + batch_size] for start in range(0, len(idx), batch_size)]
        # Batches are independent (each has its own random stream), so they may run at the
        # same time, one per group of cores; results are applied in batch order.
        for part, adv, pred in _map_batches(attack_part, parts, workers):
            broken = pred != y[part]
            x_adv[part[broken]] = adv[broken]
            robust[part[broken]] = False
        per_attack[name] = robust.copy()
        seconds[name] = time.time() - started
        say(f"{PREFIX}robust accuracy after {name}: {100.0 * robust.mean():.2f}% "
            f"({seconds[name]:.1f} s)")
    return {"x_adv": x_adv, "robust": robust, "clean": clean, "per_attack": per_attack,
            "attacks": order, "seconds": seconds, "options": dict(options or {}),
            "jit_compile": jit}


def run_standard(model, x, y, *, eps: float, seed: int = 0, batch_size: int = 250,
                 version: str = "standard", attacks=None, log=None, options=None,
                 jit_compile="auto"):
    """AutoAttack (standard version unless ``version="custom"``) on ``x``, ``y``.

    Returns ``(x_adv, per_attack_robust_flags)``; see `run` for the details."""
    out = run(model, x, y, eps=eps, seed=seed, batch_size=batch_size, version=version,
              attacks=attacks, options=options, log=log, jit_compile=jit_compile)
    return out["x_adv"], out["per_attack"]
