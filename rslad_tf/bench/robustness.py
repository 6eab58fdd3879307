"""``--robustness``: do the optimised paths train as robust a student? Digits RSLAD per seed
with each variant's training options, compared by PGD-20 accuracy."""

from __future__ import annotations

import os
import time

import numpy as np


ROBUSTNESS_VARIANTS = {
    # The reference configuration of the training step, and the CPU-optimised one (exact).
    "reference": dict(device_data="off", teacher_cache=False, fold_attack_bn=False),
    "optimised": dict(device_data="on", teacher_cache=True, fold_attack_bn=False),
    # The GPU configuration's approximate paths on top: bfloat16 and the folded attack
    # (here without XLA: CPU).
    "optimised+bf16+fold": dict(device_data="on", teacher_cache=True, fold_attack_bn=True,
                                mixed_precision="bfloat16"),
}


def robustness(seeds=(0, 1, 2), *, runs_dir: str, variants=None, log=print) -> dict:
    """Train the digits RSLAD preset (30 epochs, the digits-teacher preset's teacher) with
    each variant and seed; report the PGD-20 test accuracy of the last and best epochs
    (the training run's own selection evaluation: PGD_TRADES settings, all 450 test
    images) and the mean over seeds. The optimised runs must match the reference within
    one percentage point."""
    from rslad_tf.config import presets
    from rslad_tf.training import loop as train
    from rslad_tf.training.run_dir import teacher_checkpoint

    variants = list(variants or ROBUSTNESS_VARIANTS)
    teacher_run = os.path.join(runs_dir, "digits-teacher")
    teacher_path = teacher_checkpoint(teacher_run)
    if not os.path.isfile(teacher_path):
        log(f"training the digits teacher into {teacher_run} ...")
        train.train(presets.get("digits-teacher"), teacher_run, log=lambda m: None)
    results = {name: [] for name in variants}
    for seed in seeds:
        for name in variants:
            out = os.path.join(runs_dir, f"digits-rslad-{name}-seed{seed}")
            config = presets.get("digits-rslad").replace(
                seed=seed, teacher_path=os.path.abspath(teacher_path),
                **ROBUSTNESS_VARIANTS[name])
            started = time.perf_counter()
            summary = train.train(config, out, resume=os.path.exists(
                os.path.join(out, "config.json")), log=lambda m: None)
            row = {"seed": seed, "last_pgd20_acc": summary["last_pgd20_acc"],
                   "best_pgd20_acc": summary["best_pgd20_acc"],
                   "last_clean_acc": summary["last_clean_acc"],
                   "seconds": round(time.perf_counter() - started, 1)}
            results[name].append(row)
            log(f"  seed {seed} {name:<20} PGD-20 last {row['last_pgd20_acc']:.2f}%  best "
                f"{row['best_pgd20_acc']:.2f}%  clean {row['last_clean_acc']:.2f}%  "
                f"({row['seconds']:.0f} s)")
    summary = {"seeds": list(seeds), "runs": results, "mean": {}}
    for name, rows in results.items():
        summary["mean"][name] = {k: float(np.mean([r[k] for r in rows]))
                                 for k in ("last_pgd20_acc", "best_pgd20_acc", "last_clean_acc")}
    ref = summary["mean"].get("reference")
    for name, mean in summary["mean"].items():
        line = (f"mean of {len(seeds)} seeds, {name:<20} PGD-20 last "
                f"{mean['last_pgd20_acc']:.2f}%  best {mean['best_pgd20_acc']:.2f}%")
        if ref is not None and name != "reference":
            mean["last_minus_reference"] = mean["last_pgd20_acc"] - ref["last_pgd20_acc"]
            mean["best_minus_reference"] = mean["best_pgd20_acc"] - ref["best_pgd20_acc"]
            line += (f"  (vs reference {mean['last_minus_reference']:+.2f} / "
                     f"{mean['best_minus_reference']:+.2f} points)")
        log(line)
    return summary

