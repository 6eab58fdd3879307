"""The RSLAD step on each Keras backend against the reference algorithm in plain PyTorch
(`torch_reference`), timed side by side in one run (``--backend``, ``--profile
cpu-paper``).

Each variant runs in its own child process (Keras reads ``KERAS_BACKEND`` once, and
TensorFlow's thread pools are fixed when it starts): a `backend_step.KerasRunner` or a
`torch_reference.TorchRunner`. The parent imports neither Keras nor any framework: it
starts the children (spawned, with their environment), warms them up (tracing and
compilation; at the same time on a GPU, one after another on a CPU), then asks them in
turn to time ``steps`` steps, ``repeats`` rounds round robin, so that drift on a shared
machine hits every variant alike; it reports the median images/s, the ratios to the
reference, TFLOP/s (`flops`) and the projected time of the paper's 300-epoch CIFAR-10 run.

Variants:

- GPU profile (`gpu_variants`): the reference eager float32, as the reference code runs;
  the reference with ``torch.compile``, channels-last and bfloat16 autocast (the
  strongest plain-PyTorch peer); per Keras backend, `RSLADModel`'s step compiled
  (``jit_compile=True``) on device-resident batches, in float32 and bfloat16. In-batch
  augmentation is off on both sides (the JAX and torch backends do not have it yet).
- CPU paper profile (`cpu_paper_variants`): the reference eager float32; the public
  ``RSLADModel(...).compile(...).fit(x, y)`` with default settings on TensorFlow, JAX and
  torch; on TensorFlow also with the documented speed options.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

from rslad_tf.bench.child import ChildProcess
from rslad_tf.bench.flops import step_flops
from rslad_tf.bench.profiles import Profile
from rslad_tf.bench.projection import PROJECTION_EPOCHS, PROJECTION_TRAIN_SIZE

REFERENCE = "pytorch reference, eager float32"
COMPILED_REFERENCE = "pytorch reference, compiled bf16"
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def gpu_variants(backends, keras_torch_compile: bool = False,
                 compile_backend: str = "inductor"):
    """(name, options) of the GPU profile's variants for the Keras ``backends``
    (``compile_backend``: the compiled reference's torch.compile backend)."""
    variants = [(REFERENCE, {"kind": "torch"}),
                (COMPILED_REFERENCE, {"kind": "torch", "compiled": True, "bfloat16": True,
                                      "channels_last": True,
                                      "compile_backend": compile_backend})]
    # dict.fromkeys: a backend named twice (--backend jax jax) is one variant, not two
    # workers under one name.
    for backend in dict.fromkeys(backends):
        jit = keras_torch_compile if backend == "torch" else True
        for dtype in ("float32", "bfloat16"):
            variants.append((f"{backend} {dtype}", {"kind": "keras", "backend": backend,
                                                    "path": "step", "dtype": dtype,
                                                    "jit": jit}))
    return variants


def cpu_paper_variants(backends, cores: int):
    """(name, options) of the CPU paper profile: the reference, each backend's default
    ``fit``, and on TensorFlow the documented speed options (exact ones, then with the
    approximate bfloat16 student and BatchNorm-folded attack added)."""
    variants = [(REFERENCE, {"kind": "torch"})]
    for backend in dict.fromkeys(backends):
        variants.append((f"{backend} fit, defaults", {"kind": "keras", "backend": backend,
                                                      "path": "fit"}))
        if backend == "tensorflow":
            exact = {"kind": "keras", "backend": backend, "path": "fit", "device_data": True,
                     "cache": True, "shards": 2 if cores >= 2 else 1}
            variants.append(("tensorflow fit, exact speed options", exact))
            variants.append(("tensorflow fit, + bf16 + folded attack",
                             dict(exact, dtype="bfloat16", fold=True)))
    return variants


def _environment(options: dict, hide_gpu: bool) -> dict:
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if options["kind"] == "keras":
        env["KERAS_BACKEND"] = options["backend"]
    if hide_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


class _WrongDevice(Exception):
    """The variant would compute on another device than the one asked for."""


def _check_device(found: str, device: str, what: str) -> None:
    # A GPU profile silently timed on a CPU would take hours: stop at start-up instead.
    if device and found != device:
        raise _WrongDevice(f"--device {device}: {what} sees no GPU here (it would run on the "
                           f"{found.upper()}); on a CPU use --device cpu with --smoke or "
                           "--profile cpu-paper")


def _build(profile: Profile, options: dict, num_batches: int, device: str = ""):
    """The runner of one variant, in the child process; ``device`` ("gpu", "cpu" or ""):
    where it must compute, checked before any model is built (`_WrongDevice`)."""
    options = dict(options)
    kind = options.pop("kind")
    if kind == "torch":
        import torch

        _check_device("gpu" if torch.cuda.is_available() else "cpu", device, "PyTorch")
        from rslad_tf.bench.torch_reference import TorchRunner

        return TorchRunner(profile, num_batches=num_batches, **options)
    backend = options.pop("backend")
    shards = options.pop("shards", None)
    if shards is not None:
        from rslad_tf.common import runtime

        runtime.configure(attack_shards=shards)  # before TensorFlow starts its pools
    from rslad_tf.backends import import_keras

    import_keras()  # on TensorFlow: without its native start-up lines on stderr
    from rslad_tf.bench.backend_step import KerasRunner, _device

    _check_device(_device(), device, f"Keras' {backend} backend")
    return KerasRunner(profile, num_batches=num_batches, **options)


def _serve(conn, env: dict, profile: Profile, options: dict, num_batches: int,
           device: str = "") -> None:
    """Child process: build the runner, then answer ``(method, args)`` messages with
    ``("ok", value)`` or ``("error", traceback)``; a variant that would compute elsewhere
    than on ``device`` answers its start-up with ``("user", message)``."""
    import traceback

    os.environ.update(env)  # before Keras or a framework is imported here
    try:
        runner = _build(profile, options, num_batches, device)
        conn.send(("ok", None))
    except _WrongDevice as exc:
        conn.send(("user", str(exc)))
        return
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        method, args = message
        try:
            if method == "info":
                value = dict(runner.info(), tensorflow_imported="tensorflow" in sys.modules)
            else:
                value = getattr(runner, method)(*args)
            conn.send(("ok", value))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Worker(ChildProcess):
    """Parent-side handle of one `_serve` child."""

    def __init__(self, name, profile, options, *, hide_gpu, num_batches, device=""):
        self.name = name
        super().__init__(_serve, (_environment(options, hide_gpu), profile, options,
                                  num_batches, device), label=f"benchmark worker {name!r}")

    def send(self, method, *args):
        self.conn.send((method, args))

    def call(self, method, *args):
        self.send(method, *args)
        return self.receive()


def compare(profile: Profile, variants, *, steps: int, repeats: int, warmup: int,
            hide_gpu: bool = False, num_batches: int = 4, device: str = "", log=print) -> dict:
    """Time ``variants`` ((name, options) pairs; the first is the reference) on
    ``profile``; returns the figures (what ``--json`` writes) after printing them."""
    log(f"profile {profile.name}: student {profile.student[0]} {profile.student[1] or ''}, "
        f"teacher {profile.teacher[0]} {profile.teacher[1] or ''}, batch {profile.batch_size}, "
        f"images {profile.image_shape}, {profile.attack_steps}-step attack; timing: median "
        f"of {repeats} rounds of {steps} steps after {warmup} warm-up steps")
    workers, failed, warm = {}, {}, {}
    started = time.perf_counter()

    def collect_one(name, stage, keep=None):
        # A failed worker is reported and dropped; the others go on.
        try:
            value = workers[name].receive()
        except RuntimeError as exc:
            failed[name] = str(exc).strip().splitlines()[-1]
            log(f"  {name}: failed in {stage}: {failed[name]}")
            workers.pop(name).close()
            return
        if keep is not None:
            keep(name, value)

    def collect(stage, keep=None):
        # Every worker has been sent a request: wait for each reply.
        for name in list(workers):
            collect_one(name, stage, keep)

    def keep_warm(name, seconds):
        warm[name] = seconds
        log(f"  warm-up {name}: {seconds:.1f} s")

    finished = False
    try:
        # Start and warm up every worker at the same time (imports, tracing, compilation
        # are not timed); then time them one at a time.
        for name, options in variants:
            workers[name] = Worker(name, profile, options, hide_gpu=hide_gpu,
                                   num_batches=num_batches, device=device)
        collect("start-up")
        if not workers:
            raise RuntimeError(f"no variant could start; the first: {next(iter(failed.values()))}")
        if hide_gpu:
            # On a CPU, workers computing at the same time fight over the cores (spinning
            # thread pools): warm them up one after another.
            for name in list(workers):
                workers[name].send("warm_up", warmup)
                collect_one(name, "warm-up", keep_warm)
        else:
            for worker in workers.values():
                worker.send("warm_up", warmup)
            collect("warm-up", keep_warm)
        samples = {name: [] for name in workers}
        cpu_samples = {name: [] for name in workers}
        for round_index in range(repeats):
            for name, worker in workers.items():
                wall, cpu = worker.call("time", steps)
                samples[name].append(wall)
                cpu_samples[name].append(cpu)
                log(f"  round {round_index + 1}: {name} {wall:.1f} images/s")
        infos = {name: worker.call("info") for name, worker in workers.items()}
        finished = True
    finally:
        for worker in workers.values():
            # Stopped by an error or an interrupt: the others would finish their start-up
            # or step before reading the request to exit.
            if finished:
                worker.close()
            else:
                worker.terminate()
    result = summarise(profile, variants, samples, cpu_samples, infos, warm, failed)
    result.update(device=device, steps=steps, repeats=repeats, warmup_steps=warmup,
                  seconds=round(time.perf_counter() - started, 1))
    report(result, log=log)
    return result


def summarise(profile, variants, samples, cpu_samples, infos, warm, failed) -> dict:
    """The figures of a `compare` run from its raw samples (images/s per round)."""
    flops = next((i for i in infos.values() if "student_forward_flops" in i), None)
    per_image = None
    if flops is not None:
        per_image = step_flops(flops["student_forward_flops"], flops["teacher_forward_flops"],
                               profile.attack_steps)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    entries = {}
    for name, options in variants:
        if name not in medians:
            entries[name] = {"options": options, "error": failed.get(name, "not run")}
            continue
        rate = medians[name]
        entry = {"options": options, "images_per_s": rate, "samples": samples[name],
                 "images_per_cpu_s": statistics.median(cpu_samples[name]),
                 "warmup_s": round(warm.get(name, 0.0), 2), **infos[name],
                 "projected_300_epoch_hours":
                     PROJECTION_EPOCHS * PROJECTION_TRAIN_SIZE / rate / 3600}
        for label, ref in (("vs_reference", REFERENCE),
                           ("vs_compiled_reference", COMPILED_REFERENCE)):
            if ref in medians:
                entry[label] = rate / medians[ref]
                entry[f"paired_{label}"] = statistics.median(
                    a / b for a, b in zip(samples[name], samples[ref]))
        if per_image is not None:
            entry["tflops"] = rate * per_image / 1e12
        entries[name] = entry
    names = [i["device_name"] for i in infos.values() if "device_name" in i]
    return {"profile": dataclasses.asdict(profile), "step_flops_per_image": per_image,
            "device_name": names[0] if names else None, "variants": entries}


def report(result: dict, log=print) -> None:
    """Print a `compare` result."""
    per_image = result.get("step_flops_per_image")
    log("")
    where = result.get("device") or "this machine"
    if result.get("device_name"):
        where += f" ({result['device_name']})"
    log(f"RSLAD training step on {where}, images/s (median "
        f"of {result['repeats']} rounds of {result['steps']} steps), ratio to the reference "
        f"(of medians; median of per-round ratios)"
        + (f"; {per_image / 1e9:.1f} GFLOP per image" if per_image else "") + ":")
    for name, e in result["variants"].items():
        if "error" in e:
            log(f"  {name:<42} not measured: {e['error']}")
            continue
        text = f"  {name:<42} {e['images_per_s']:9.1f}"
        if "vs_reference" in e:
            text += f"  x{e['vs_reference']:.2f} (x{e['paired_vs_reference']:.2f})"
        if "vs_compiled_reference" in e:
            text += f"  vs compiled bf16 x{e['vs_compiled_reference']:.2f}"
        if "tflops" in e:
            text += f"  {e['tflops']:.3g} TFLOP/s"
        hours = e["projected_300_epoch_hours"]
        text += (f"  300 epochs {hours * 60:.0f} min" if hours < 10
                 else f"  300 epochs {hours:.0f} h")
        text += f"  [{e.get('device', '?')}]"
        if e.get("jit_compile") is not None and e.get("backend") != "pytorch":
            text += "  [compiled]" if e["jit_compile"] else "  [not compiled]"
        if e.get("tensorflow_imported") and e.get("backend") in ("jax", "torch", "pytorch"):
            text += "  [TensorFlow was imported]"
        log(text)
