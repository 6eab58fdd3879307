"""The timed run: every configuration of a profile, timed side by side in child processes
(`workers`), and the report it prints.

Each configuration is timed ``repeats`` times for ``steps`` steps, round robin, and the
median images/s is reported, with the ratio to the reference (of the medians, and the
median of the per-round ratios); on GPU also TFLOP/s (`flops`) and a projection of the
paper's CIFAR-10 run (`projection`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics

from rslad_tf.bench.flops import pgd_flops, step_flops
from rslad_tf.bench.profiles import (PROFILES, REFERENCE, Profile, describe,
                                     optimised_options)
from rslad_tf.bench.projection import project_eval, project_run
from rslad_tf.bench.workers import LayoutProcess, time_round_robin
from rslad_tf.common.errors import UserError


def load_average():
    """1-minute load average of the machine (other users' work skews CPU timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def device_name(kind: str) -> str:
    """The GPU's name, or the CPU's model and core count."""
    import tensorflow as tf

    if kind == "gpu":
        gpus = tf.config.list_physical_devices("GPU")
        try:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        except (IndexError, RuntimeError, ValueError):
            return "GPU"
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def thread_layout(shards: int) -> str:
    """The thread pools of a process laid out for `shards` attack shards, in words."""
    from rslad_tf.common.runtime import thread_pools

    intra, inter = thread_pools(shards)
    return f"{shards} attack shard(s), intra-op {intra}, inter-op {inter}"


def run(device: str | None = None, *, quick: bool = False, steps: int | None = None,
        repeats: int | None = None, ablations: bool | None = None, profile: Profile = None,
        optimised: dict | None = None, cache_buckets: int | None = None, log=print) -> dict:
    """Measure; returns the figures as a dict (what ``--json`` writes). ``profile`` and
    ``optimised`` override the device's defaults (tests use tiny ones). The
    configurations run in child processes, one per thread layout (`workers.Layout`)."""
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    kind = device or ("gpu" if has_gpu else "cpu")
    if kind == "gpu" and not has_gpu and profile is None:
        raise UserError("--device gpu: no GPU is visible to TensorFlow")
    profile = profile or PROFILES[kind]
    if quick:
        profile = dataclasses.replace(profile, num_examples=min(profile.num_examples, 1024))
    if cache_buckets:
        profile = dataclasses.replace(profile, cache_buckets=int(cache_buckets))
    load_before = load_average()
    steps = steps or (5 if quick else 10)
    repeats = repeats or (3 if quick else 9)
    # Ablations (each fast path alone) by default on CPU only: on GPU each XLA configuration
    # is another compilation of the whole step (minutes for ResNet-18 + WRN-34-10).
    ablations = (not quick and kind == "cpu") if ablations is None else ablations
    optimised = optimised_options(kind) if optimised is None else dict(optimised)
    optimised.setdefault("shards", 1)
    log(f"device: {kind.upper()} ({device_name(kind)}); TensorFlow {tf.__version__}")
    log(f"profile {profile.name}: student {profile.student[0]} {profile.student[1] or ''}, "
        f"teacher {profile.teacher[0]} {profile.teacher[1] or ''}, batch {profile.batch_size}, "
        f"images {profile.image_shape}, {profile.attack_steps}-step attack, "
        f"N = {profile.num_examples}; timing: median of {repeats} x {steps} steps")

    specs = [("reference", dict(REFERENCE)), ("optimised", optimised)]
    if ablations:
        for key, label in (("device_data", "+ device data"), ("cache", "+ teacher cache"),
                           ("fold", "+ folded BN attack"), ("mixed", "+ bfloat16"),
                           ("shards", "+ attack shards"), ("jit", "+ XLA")):
            if key == "jit" and kind == "cpu" and quick:
                continue
            if key == "shards" and optimised["shards"] == 1:
                continue
            options = dict(REFERENCE)
            options[key] = {"mixed": "bfloat16", "shards": optimised["shards"]}.get(key, True)
            if key in ("device_data", "cache"):
                options["host_augment"] = False  # in-step augmentation (needed for the ids)
            specs.append((label, options))
        if optimised["mixed"] == "off":
            # The GPU configuration's approximate paths, on top of the exact ones.
            specs.append(("optimised + bf16 + fold", dict(optimised, mixed="bfloat16",
                                                          fold=True)))
        else:
            specs.append(("optimised, float32", dict(optimised, mixed="off")))

    layouts = sorted({options["shards"] for _, options in specs})
    processes = {}
    try:
        for shards in layouts:
            processes[shards] = LayoutProcess(
                shards, kind == "cpu" and has_gpu, profile,
                [(n, o) for n, o in specs if o["shards"] == shards])
        workers = {name: processes[options["shards"]] for name, options in specs}
        names = [name for name, _ in specs]
        f_student, f_teacher = workers["reference"].call("flops")
        warmup = {}
        for name in names:
            warmup[name] = workers[name].call("warm_up", name)
            log(f"  warm-up (tracing / compiling) {name}: {warmup[name]:.1f} s")
        samples, cpu_samples = time_round_robin(workers, names, steps=steps, repeats=repeats)
        stats = {name: workers[name].call("stats", name) for name in names}

        # Cache cold / warm (the GPU profile's augmentation has 162 variants per image: one
        # warm-up epoch cannot fill it; time the two extremes and project a run from them).
        cold_warm = None
        if (stats["optimised"].get("cache_variants")
                and profile.augment_padding + int(profile.augment_flip) > 0):
            cold_warm = [statistics.median(time_round_robin(
                workers, ["optimised"], steps=steps, repeats=repeats,
                cache_state=state)[0]["optimised"]) for state in ("cold", "warm")]

        # Evaluation attack: PGD-20 in float32 (evaluation never runs in mixed precision).
        eval_batches = 2 if quick else 4
        eval_ref, eval_ref_s = workers["reference"].call(
            "eval_attack", "reference", jit=False, repeats=repeats, batches=eval_batches)
        eval_opt, eval_opt_s = workers["optimised"].call(
            "eval_attack", "optimised", jit=optimised["jit"], repeats=repeats,
            batches=eval_batches)
    finally:
        for process in processes.values():
            process.close()

    result = {
        "device": kind, "device_name": device_name(kind), "profile": dataclasses.asdict(profile),
        "tensorflow": tf.__version__, "steps": steps, "repeats": repeats,
        "load_average_before": load_before, "thread_layouts": {
            str(shards): thread_layout(shards) for shards in layouts},
        "student_forward_flops": f_student, "teacher_forward_flops": f_teacher,
        "train_step": {}, "eval_attack": {},
    }
    ref_samples, ref_cpu_samples = samples["reference"], cpu_samples["reference"]
    for name, options in specs:
        entry = {"images_per_s": statistics.median(samples[name]), "samples": samples[name],
                 "images_per_cpu_s": statistics.median(cpu_samples[name]),
                 "cpu_samples": cpu_samples[name], "options": options,
                 "describe": describe(options), "warmup_s": round(warmup[name], 2)}
        entry.update({k: v for k, v in stats[name].items()
                      if k not in ("cache_variants", "cache_buckets")})
        entry["ratio"] = entry["images_per_s"] / statistics.median(ref_samples)
        entry["cpu_ratio"] = entry["images_per_cpu_s"] / statistics.median(ref_cpu_samples)
        # Median of the per-round ratios: each round times every configuration back to
        # back, so a round's ratio is the least affected by load drift on a shared machine.
        entry["paired_ratio"] = statistics.median(
            a / b for a, b in zip(samples[name], ref_samples))
        teacher_fraction = entry.get("cache_teacher_row_fraction", 1.0)
        entry["tflops"] = (entry["images_per_s"]
                           * step_flops(f_student, f_teacher, profile.attack_steps,
                                        teacher_fraction) / 1e12)
        result["train_step"][name] = entry
    if cold_warm is not None:
        opt_stats = stats["optimised"]
        result["train_step"]["optimised"]["cache_cold_images_per_s"] = cold_warm[0]
        result["train_step"]["optimised"]["cache_warm_images_per_s"] = cold_warm[1]
        result["projection"] = project_run(
            profile, result["train_step"]["reference"]["images_per_s"], cold_warm[0],
            cold_warm[1], opt_stats["cache_variants"], opt_stats["cache_buckets"])

    attack_flops = pgd_flops(f_student, profile.eval_steps)
    result["eval_attack"] = {
        "attack": f"PGD-{profile.eval_steps} (CE, uniform start), float32, "
                  f"batch {min(profile.eval_batch_size, profile.num_examples)}",
        "reference": {"images_per_s": eval_ref, "samples": eval_ref_s, "jit_compile": False,
                      "shards": 1, "tflops": eval_ref * attack_flops / 1e12},
        "optimised": {"images_per_s": eval_opt, "samples": eval_opt_s,
                      "jit_compile": optimised["jit"], "shards": optimised["shards"],
                      "tflops": eval_opt * attack_flops / 1e12},
        "ratio": eval_opt / eval_ref,
    }
    if "projection" in result:
        result["projection"].update(project_eval(eval_ref, eval_opt))
    result["load_average_after"] = load_average()
    report(result, log=log)
    return result


def report(result: dict, log=print) -> None:
    """Print the figures of `run` (its returned dict) as the benchmark's report."""
    log("")
    log(f"device: {result['device'].upper()} ({result['device_name']}); load average "
        f"{result.get('load_average_before')} -> {result.get('load_average_after')}")
    log(f"RSLAD training step, images/s wall clock (median of {result['repeats']} rounds of "
        f"{result['steps']} steps; ratio of medians, and median of per-round ratios), and per "
        f"CPU second of this process:")
    for name, entry in result["train_step"].items():
        extra = ""
        if "cache_hit_rate" in entry:
            extra += f"  cache hits {100 * entry['cache_hit_rate']:.0f}%"
        if result["device"] == "gpu":
            extra += f"  {entry['tflops']:.2f} TFLOP/s"
        log(f"  {name:<20} {entry['images_per_s']:8.1f}  x{entry['ratio']:.2f}  "
            f"(paired x{entry['paired_ratio']:.2f})   per CPU-s "
            f"{entry['images_per_cpu_s']:8.1f}  x{entry['cpu_ratio']:.2f}   "
            f"[{entry['describe']}]{extra}")
    opt = result["train_step"]["optimised"]
    if "cache_cold_images_per_s" in opt:
        log(f"  optimised, cache cold (all misses) {opt['cache_cold_images_per_s']:.1f}; "
            f"cache warm (all hits) {opt['cache_warm_images_per_s']:.1f}")
    if "cache_bytes" in opt:
        log(f"  teacher soft-label cache: {opt['cache_bytes'] / 2**20:.2f} MiB for "
            f"{result['profile']['num_examples']} images")
    ev = result["eval_attack"]
    log(f"evaluation attack {ev['attack']}, images/s:")
    for name in ("reference", "optimised"):
        e = ev[name]
        extra = f"  {e['tflops']:.2f} TFLOP/s" if result["device"] == "gpu" else ""
        log(f"  {name:<22} {e['images_per_s']:9.1f}  "
            f"[{'XLA' if e['jit_compile'] else 'no XLA'}]{extra}")
    log(f"  ratio x{ev['ratio']:.2f}")
    if "projection" in result:
        p = result["projection"]
        log(f"projected {p['epochs']}-epoch CIFAR-10 RSLAD run: training "
            f"{p['train_hours_reference']:.1f} h -> {p['train_hours_optimised']:.1f} h, "
            f"PGD-20 selection ({p['eval_epochs']} evaluations) {p['eval_hours_reference']:.2f} h "
            f"-> {p['eval_hours_optimised']:.2f} h")

