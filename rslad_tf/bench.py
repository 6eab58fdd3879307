"""`python -m rslad_tf.bench`: throughput of the RSLAD training step and of the PGD-20
evaluation attack, reference configuration against the optimised one, side by side in one
run.

Reference configuration (what a straightforward port does): float32, no XLA, the teacher
run on every batch, augmentation on the host (a per-image tf.data ``map``), batches copied
from host memory. Optimised configuration: the fast paths that help on the device at hand
(``OPTIMISED``; measured, see docs/speed.md):

- CPU: the exact fast paths only: the training set on the device, the teacher soft-label
  cache, and the attack cut into 2 shards that run at the same time, one core each
  (`rslad_tf.attacks.engine.pgd_graph`), in a process whose thread pools are laid out for
  them (inter-op 2, intra-op cores / 2; `rslad_tf.common.runtime.configure`). No XLA (XLA's CPU
  convolution gradients were 3-4x slower than the plain graph), and neither bfloat16 nor
  the folded attack (a few percent at most here; the ablation rows show them).
- GPU: device data and the cache, plus XLA for the training step and the evaluation
  attack, the attack with BatchNorm folded into the convolutions, and bfloat16 mixed
  precision for the student in training (evaluation stays float32).

Profiles: ``cpu`` (default without a GPU): digits-size models, small_cnn teacher width 64,
student width 16, batch 128, 8x8x1 images (the embedded digits training set, no
augmentation, as its preset); ``gpu`` (default with a GPU): ResNet-18 student, WRN-34-10
teacher, batch 128, random 32x32x3 data (CIFAR's pad-4 crop + flip augmentation), no
download.

Processes: thread pools are fixed per process, so the configurations run in child
processes, one per thread layout: the reference with the default layout (all cores in the
intra-op pool, the fastest for it), the sharded ones with theirs. The parent asks them in
turn; a process waits idle while another is timed.

Timing: the step function Keras' ``fit`` runs (``train_function``) is called directly on an
iterator; warm-up steps (tracing, XLA compilation, filling the cache) are excluded; each
configuration is timed ``repeats`` times for ``steps`` steps, round robin across the
configurations (so load drift on a shared machine hits all of them alike), and the median
images/s is reported. The device is synchronised at the end of each timed repeat.

FLOPs (GPU TFLOP/s): counted analytically from the model's layers, multiply-adds x 2:
Conv2D ``2 * H_out * W_out * k_h * k_w * C_in / groups * C_out``; DepthwiseConv2D
``2 * H_out * W_out * k_h * k_w * C_in * multiplier``; Dense ``2 * inputs * units`` per
position; BatchNorm, activations, pooling and additions are ignored (a few percent). A
forward pass costs F; its gradient with respect to the input another F; a training
backward pass (input and weight gradients) 2F. RSLAD step per image:
``steps * 2 F_s`` (attack) ``+ 2 * 3 F_s`` (two training passes) ``+ r * F_t`` (teacher, r =
fraction of rows the teacher computes: 1 without the cache). PGD-k per image: ``k * 2 F_s``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

import numpy as np

from rslad_tf.common.errors import UserError, run_cli


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    image_shape: tuple
    num_classes: int
    student: tuple  # (model name, kwargs)
    teacher: tuple
    batch_size: int
    num_examples: int  # training set size (the cache and the device data hold this many)
    epsilon: float
    attack_steps: int
    augment_padding: int
    augment_flip: bool
    eval_batch_size: int
    eval_steps: int = 20
    real_digits: bool = False
    cache_buckets: int = 4  # granularity of the teacher call on cache misses (SoftLabelCache)


PROFILES = {
    "cpu": Profile("cpu-digits", (8, 8, 1), 10, ("small_cnn", {"width": 16}),
                   ("small_cnn", {"width": 64}), batch_size=128, num_examples=1347,
                   epsilon=0.2, attack_steps=10, augment_padding=0, augment_flip=False,
                   eval_batch_size=256, real_digits=True),
    "gpu": Profile("gpu-cifar", (32, 32, 3), 10, ("resnet18", {}), ("wrn34_10", {}),
                   batch_size=128, num_examples=50000, epsilon=8 / 255, attack_steps=10,
                   augment_padding=4, augment_flip=True, eval_batch_size=256),
}

# Which fast paths the optimised configuration uses on each device (see module docstring).
# CPU: only the exact ones (the same weights as the reference, bit for bit): bfloat16 and
# the folded attack gained at most a few percent here (ablation rows) and change rounding.
OPTIMISED = {
    "cpu": dict(jit=False, mixed="off", device_data=True, cache=True, fold=False, shards=2),
    "gpu": dict(jit=True, mixed="bfloat16", device_data=True, cache=True, fold=True, shards=1),
}


def optimised_options(kind: str) -> dict:
    options = dict(OPTIMISED[kind])
    from rslad_tf.common.runtime import cores

    if cores() < 2:
        options["shards"] = 1  # one core: nothing to run the shards side by side
    return options


REFERENCE = dict(jit=False, mixed="off", device_data=False, cache=False, fold=False,
                 host_augment=True, shards=1)
# The paper's CIFAR-10 schedule, for the GPU run-time projection.
PROJECTION_EPOCHS = 300
PROJECTION_TRAIN_SIZE = 50000
PROJECTION_TEST_SIZE = 10000


def _load_average():
    """1-minute load average of the machine (other users' work skews CPU timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- FLOPs ------------------------------------------------------------------------------
def _shape(tensor):
    return tuple(int(d) if d is not None else 1 for d in tensor.shape[1:])


def model_flops(model) -> int:
    """Forward FLOPs of one image (conv and dense layers, 2 per multiply-add; nested
    models are counted through their layers)."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if getattr(layer, "layers", None):
            total += model_flops(layer)
        elif isinstance(layer, layers.DepthwiseConv2D):
            h, w, _ = _shape(layer.output)
            kh, kw, c_in, multiplier = (int(d) for d in layer.kernel.shape)
            total += 2 * h * w * kh * kw * c_in * multiplier
        elif isinstance(layer, layers.Conv2D):
            h, w, c_out = _shape(layer.output)
            kh, kw, c_in_per_group, _ = (int(d) for d in layer.kernel.shape)
            total += 2 * h * w * kh * kw * c_in_per_group * c_out
        elif isinstance(layer, layers.Dense):
            positions = int(np.prod(_shape(layer.output)[:-1]))  # 1 for [B, units]
            total += 2 * positions * int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return int(total)


def step_flops(student_flops: int, teacher_flops: int, attack_steps: int,
               teacher_fraction: float = 1.0) -> float:
    """FLOPs of one RSLAD training step per image (see the module docstring)."""
    return ((2 * attack_steps + 6) * student_flops) + teacher_fraction * teacher_flops


# -- building the configurations ---------------------------------------------------------
def _device_name(kind: str) -> str:
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


def make_data(profile: Profile, seed: int = 0):
    """(images, labels) of the training set the benchmark uses."""
    if profile.real_digits:
        from rslad_tf.data import load_numpy

        x, y = load_numpy("digits", "train")
        return x[:profile.num_examples], y[:profile.num_examples]
    rng = np.random.default_rng(seed)
    x = rng.random((profile.num_examples,) + tuple(profile.image_shape), dtype=np.float32)
    y = rng.integers(0, profile.num_classes, profile.num_examples).astype(np.int32)
    return x, y


def host_augment_dataset(x, y, profile: Profile, seed: int):
    """The reference input pipeline: shuffled batches from host memory, pad-crop + flip per
    image in a tf.data ``map`` on the host (what a port of the PyTorch loader does)."""
    import tensorflow as tf

    p = profile.augment_padding
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).repeat()
    if p or profile.augment_flip:
        h, w, c = profile.image_shape

        def augment(image, label):
            if p:
                image = tf.image.pad_to_bounding_box(image, p, p, h + 2 * p, w + 2 * p)
                image = tf.image.random_crop(image, [h, w, c])
            if profile.augment_flip:
                image = tf.image.random_flip_left_right(image)
            return image, label

        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(profile.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class Config:
    """One configuration of the training step: its method, iterator and options."""

    def __init__(self, name, profile: Profile, teacher, x, y, *, jit=False, mixed="off",
                 device_data=False, cache=False, fold=False, host_augment=False, shards=1,
                 seed=0):
        import keras

        from rslad_tf import models
        from rslad_tf.data import make_dataset
        from rslad_tf.data.device_data import DeviceData, indexed_dataset
        from rslad_tf.methods import RSLADModel
        from rslad_tf.methods.soft_label_cache import SoftLabelCache
        from rslad_tf.training.loop import MIXED_POLICIES, dtype_policy

        self.name = name
        # shards: the attack shards of the process this configuration runs in (`_Layout`).
        self.options = dict(jit=jit, mixed=mixed, device_data=device_data, cache=cache,
                            fold=fold, host_augment=host_augment, shards=shards)
        keras.utils.set_random_seed(seed)
        with dtype_policy(MIXED_POLICIES.get(mixed)):
            student = models.create(profile.student[0], profile.num_classes,
                                    input_shape=profile.image_shape, **profile.student[1])
        # Host augmentation: the method's in-step augmentation is off, the pipeline does it.
        in_step_aug = not host_augment
        method = RSLADModel(student, teacher, epsilon=profile.epsilon,
                            step_size=profile.epsilon / 4, attack_steps=profile.attack_steps,
                            weight_decay=2e-4, seed=seed,
                            augment_padding=profile.augment_padding if in_step_aug else 0,
                            augment_flip=profile.augment_flip if in_step_aug else False)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        if mixed == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        method.compile(optimizer=optimizer, jit_compile=bool(jit))
        method.build((None,) + tuple(profile.image_shape))
        method.optimizer.build(student.trainable_variables)
        self.cache = None
        if device_data:
            data = DeviceData(x, y)
            method.attach_device_data(data)
            dataset = data.index_dataset(profile.batch_size, seed=seed, drop_remainder=True,
                                         repeat=True)
        elif cache:
            dataset = indexed_dataset(x, y, profile.batch_size, seed=seed, drop_remainder=True,
                                      repeat=True)
        elif host_augment:
            dataset = host_augment_dataset(x, y, profile, seed)
        else:
            dataset = make_dataset(x, y, profile.batch_size, shuffle=True, seed=seed,
                                   drop_remainder=True, repeat=True)
        if cache:
            self.cache = SoftLabelCache(len(x), profile.num_classes,
                                        padding=profile.augment_padding,
                                        flip=profile.augment_flip,
                                        buckets=profile.cache_buckets)
            method.attach_teacher_cache(self.cache)
        self.folded = method.set_attack_batchnorm_folding(True) if fold else False
        self.method = method
        self.iterator = iter(dataset)
        method.make_train_function()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.method.train_function(self.iterator)
        # Synchronise: reading a weight waits for every step that writes it.
        self.method.student.trainable_variables[0].numpy()


# -- one process per thread layout ------------------------------------------------------
# A process's TensorFlow thread pools are fixed once it starts, and the attack shards need
# their own layout (inter-op = shards, intra-op = cores / shards) while the reference is
# fastest with the default one (all cores intra-op). So each layout gets a child process;
# the parent asks them in turn to time their configurations (round robin, as before), and
# a process waits idle while another is timed.
class _Layout:
    """The configurations of one thread layout, built and timed in one (child) process."""

    def __init__(self, profile: Profile, specs, seed: int = 0):
        import keras

        from rslad_tf import models

        keras.utils.set_random_seed(seed)
        self.profile = profile
        self.x, self.y = make_data(profile)
        self.teacher = models.create(profile.teacher[0], profile.num_classes,
                                     input_shape=profile.image_shape, **profile.teacher[1])
        self.teacher.trainable = False
        self.configs = {name: Config(name, profile, self.teacher, self.x, self.y, **options)
                        for name, options in specs}

    def flops(self):
        from rslad_tf import models

        p = self.profile
        student = models.create(p.student[0], p.num_classes, input_shape=p.image_shape,
                                **p.student[1])
        return model_flops(student), model_flops(self.teacher)

    def warm_up(self, name):
        """Trace / compile; with one variant per image (no augmentation) one epoch fills
        the cache, as in training from the second epoch on. Returns seconds."""
        config = self.configs[name]
        epoch_steps = -(-self.profile.num_examples // self.profile.batch_size)
        started = time.perf_counter()
        fill = config.cache is not None and config.cache.variants == 1
        config.run(max(3, epoch_steps) if fill else 3)
        seconds = time.perf_counter() - started
        if config.cache is not None:
            config.cache.reset_counters()  # report the timed steps' hit rate only
        return seconds

    def time(self, name, steps, cache_state=None):
        """(images/s wall clock, images per CPU second of this process) of `steps` steps;
        ``cache_state`` "cold" empties the teacher cache first, "warm" marks it full."""
        import tensorflow as tf

        config = self.configs[name]
        if cache_state == "cold":
            config.cache.clear()
        elif cache_state == "warm":
            config.cache.filled.assign(tf.ones_like(config.cache.filled))  # timing only
        start, start_cpu = time.perf_counter(), time.process_time()
        config.run(steps)
        images = steps * self.profile.batch_size
        return (images / (time.perf_counter() - start),
                images / max(time.process_time() - start_cpu, 1e-9))

    def stats(self, name):
        config = self.configs[name]
        entry = {"folded": config.folded}
        if config.cache is not None:
            counters = config.cache.counters()
            entry["cache_hit_rate"] = counters["hit_rate"]
            entry["cache_teacher_row_fraction"] = (counters["teacher_rows"] / counters["lookups"]
                                                   if counters["lookups"] else 0.0)
            entry["cache_bytes"] = config.cache.nbytes
            entry["cache_filled_fraction"] = config.cache.filled_fraction()
            entry["cache_variants"] = config.cache.variants
            entry["cache_buckets"] = config.cache.buckets
        return entry

    def eval_attack(self, name, *, jit, repeats, batches):
        """PGD-k images/s on this configuration's student, always in float32."""
        from rslad_tf import models

        config, p = self.configs[name], self.profile
        student = config.method.student
        if config.options["mixed"] != "off":
            student = models.create(p.student[0], p.num_classes, input_shape=p.image_shape,
                                    **p.student[1])
            student.set_weights(config.method.student.get_weights())
        xs, ys = self.x[:p.eval_batch_size], self.y[:p.eval_batch_size]
        return time_eval_attack(student, xs, ys, eps=p.epsilon, steps=p.eval_steps, jit=jit,
                                repeats=repeats, batches=batches, batch_size=len(xs))


def _serve(conn, shards: int, hide_gpu: bool, profile: Profile, specs) -> None:
    """Child process: set up the thread layout, build the configurations, then answer
    ``(method, args, kwargs)`` messages with ``("ok", value)`` or ``("error", traceback)``."""
    import traceback

    try:
        from rslad_tf.common.quiet import import_tensorflow

        tf = import_tensorflow()
        if hide_gpu:
            tf.config.set_visible_devices([], "GPU")
        from rslad_tf.common import runtime

        runtime.configure(attack_shards=shards)
        layout = _Layout(profile, specs)
        conn.send(("ok", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        method, args, kwargs = message
        try:
            conn.send(("ok", getattr(layout, method)(*args, **kwargs)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class _LayoutProcess:
    """Parent-side handle of one `_serve` child."""

    def __init__(self, shards: int, hide_gpu: bool, profile: Profile, specs):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # never fork a TensorFlow process
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, daemon=True,
                                       args=(child, shards, hide_gpu, profile, list(specs)))
        self.process.start()
        child.close()
        self._reply()

    def call(self, method, *args, **kwargs):
        self.conn.send((method, args, kwargs))
        return self._reply()

    def _reply(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"benchmark worker died (exit code {self.process.exitcode})")
        if status == "error":
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


def _time_round_robin(workers, names, *, steps, repeats, cache_state=None):
    """Per configuration: images/s of each of `repeats` timed rounds of `steps` steps, wall
    clock and per CPU second of its process (robust to other processes on a shared
    machine). Every round times every configuration back to back."""
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            w, c = workers[name].call("time", name, steps, cache_state)
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def _describe(options: dict) -> str:
    parts = [f"{'XLA' if options.get('jit') else 'no XLA'}",
             "float32" if options.get("mixed", "off") == "off" else options["mixed"],
             "teacher cache" if options.get("cache") else "teacher every step",
             "device data" if options.get("device_data") else "tf.data from host"]
    if options.get("host_augment"):
        parts.append("host augmentation")
    if options.get("fold"):
        parts.append("folded BN attack")
    if options.get("shards", 1) > 1:
        parts.append(f"{options['shards']} attack shards")
    return ", ".join(parts)


# -- evaluation attack ------------------------------------------------------------------
def time_eval_attack(model, x, y, *, eps, steps, jit, repeats, batches, batch_size):
    """Median images/s of PGD-k (PGD_TRADES settings: CE, uniform start, step 0.003 at
    8/255) on batches of `batch_size`; one warm-up call first."""
    import tensorflow as tf

    from rslad_tf.attacks import PROTOCOL, pgd

    settings = PROTOCOL["pgd_trades"]
    xs = tf.constant(x[:batch_size])
    ys = tf.constant(y[:batch_size])

    def once():
        return pgd(model, xs, ys, eps=eps, steps=steps, step_size=settings.step_size(eps),
                   loss=settings.loss, start=settings.start, seed=0, kappa=settings.kappa,
                   jit_compile=jit)

    once().numpy()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            out = once()
        out.numpy()
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), rates


# -- the benchmark ----------------------------------------------------------------------
def run(device: str | None = None, *, quick: bool = False, steps: int | None = None,
        repeats: int | None = None, ablations: bool | None = None, profile: Profile = None,
        optimised: dict | None = None, cache_buckets: int | None = None, log=print) -> dict:
    """Measure; returns the figures as a dict (what ``--json`` writes). ``profile`` and
    ``optimised`` override the device's defaults (tests use tiny ones). The
    configurations run in child processes, one per thread layout (`_Layout`)."""
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
    load_before = _load_average()
    steps = steps or (5 if quick else 10)
    repeats = repeats or (3 if quick else 9)
    # Ablations (each fast path alone) by default on CPU only: on GPU each XLA configuration
    # is another compilation of the whole step (minutes for ResNet-18 + WRN-34-10).
    ablations = (not quick and kind == "cpu") if ablations is None else ablations
    optimised = optimised_options(kind) if optimised is None else dict(optimised)
    optimised.setdefault("shards", 1)
    log(f"device: {kind.upper()} ({_device_name(kind)}); TensorFlow {tf.__version__}")
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
            processes[shards] = _LayoutProcess(
                shards, kind == "cpu" and has_gpu, profile,
                [(n, o) for n, o in specs if o["shards"] == shards])
        workers = {name: processes[options["shards"]] for name, options in specs}
        names = [name for name, _ in specs]
        f_student, f_teacher = workers["reference"].call("flops")
        warmup = {}
        for name in names:
            warmup[name] = workers[name].call("warm_up", name)
            log(f"  warm-up (tracing / compiling) {name}: {warmup[name]:.1f} s")
        samples, cpu_samples = _time_round_robin(workers, names, steps=steps, repeats=repeats)
        stats = {name: workers[name].call("stats", name) for name in names}

        # Cache cold / warm (the GPU profile's augmentation has 162 variants per image: one
        # warm-up epoch cannot fill it; time the two extremes and project a run from them).
        cold_warm = None
        if (stats["optimised"].get("cache_variants")
                and profile.augment_padding + int(profile.augment_flip) > 0):
            cold_warm = [statistics.median(_time_round_robin(
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
        "device": kind, "device_name": _device_name(kind), "profile": dataclasses.asdict(profile),
        "tensorflow": tf.__version__, "steps": steps, "repeats": repeats,
        "load_average_before": load_before, "thread_layouts": {
            str(shards): _thread_layout(shards) for shards in layouts},
        "student_forward_flops": f_student, "teacher_forward_flops": f_teacher,
        "train_step": {}, "eval_attack": {},
    }
    ref_samples, ref_cpu_samples = samples["reference"], cpu_samples["reference"]
    for name, options in specs:
        entry = {"images_per_s": statistics.median(samples[name]), "samples": samples[name],
                 "images_per_cpu_s": statistics.median(cpu_samples[name]),
                 "cpu_samples": cpu_samples[name], "options": options,
                 "describe": _describe(options), "warmup_s": round(warmup[name], 2)}
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

    pgd_flops = profile.eval_steps * 2 * f_student
    result["eval_attack"] = {
        "attack": f"PGD-{profile.eval_steps} (CE, uniform start), float32, "
                  f"batch {min(profile.eval_batch_size, profile.num_examples)}",
        "reference": {"images_per_s": eval_ref, "samples": eval_ref_s, "jit_compile": False,
                      "shards": 1, "tflops": eval_ref * pgd_flops / 1e12},
        "optimised": {"images_per_s": eval_opt, "samples": eval_opt_s,
                      "jit_compile": optimised["jit"], "shards": optimised["shards"],
                      "tflops": eval_opt * pgd_flops / 1e12},
        "ratio": eval_opt / eval_ref,
    }
    if "projection" in result:
        result["projection"].update(project_eval(eval_ref, eval_opt))
    result["load_average_after"] = _load_average()
    report(result, log=log)
    return result


def _thread_layout(shards: int) -> str:
    from rslad_tf.common.runtime import thread_pools

    intra, inter = thread_pools(shards)
    return f"{shards} attack shard(s), intra-op {intra}, inter-op {inter}"


def _eval_epochs(epochs=PROJECTION_EPOCHS):
    from rslad_tf.config import presets
    from rslad_tf.training.loop import is_eval_epoch

    config = presets.get("cifar10-resnet18-rslad").replace(epochs=epochs)
    return sum(1 for e in range(epochs) if is_eval_epoch(config, e))


def project_run(profile, reference_rate, cold_rate, warm_rate, variants, buckets) -> dict:
    """Hours of the paper's 300-epoch CIFAR-10 RSLAD training (no evaluation) from measured
    step rates: the reference; the optimised one with the cache, whose expected miss rate
    in epoch e is (1 - 1/variants)^e (each epoch draws one random variant per image) and
    whose teacher runs on the misses rounded up to a bucket (1/buckets of the batch)."""
    steps_per_epoch = -(-PROJECTION_TRAIN_SIZE // profile.batch_size)
    b = profile.batch_size
    t_cold, t_warm = b / cold_rate, b / warm_rate
    total = 0.0
    for epoch in range(PROJECTION_EPOCHS):
        miss = (1.0 - 1.0 / variants) ** epoch
        chunk = -(-b // buckets)
        rows = min(b, -(-int(round(miss * b)) // chunk) * chunk) / b
        total += steps_per_epoch * (t_warm + rows * (t_cold - t_warm))
    reference = PROJECTION_EPOCHS * steps_per_epoch * b / reference_rate
    return {"epochs": PROJECTION_EPOCHS, "train_hours_reference": reference / 3600,
            "train_hours_optimised": total / 3600}


def project_eval(eval_ref_rate, eval_opt_rate) -> dict:
    """Hours of the checkpoint-selection evaluations (PGD-20 on the 10,000 test images at
    the reference's evaluation epochs) at the measured attack rates."""
    n = _eval_epochs() * PROJECTION_TEST_SIZE
    return {"eval_epochs": _eval_epochs(), "eval_hours_reference": n / eval_ref_rate / 3600,
            "eval_hours_optimised": n / eval_opt_rate / 3600}


def report(result: dict, log=print) -> None:
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


# -- robustness check -------------------------------------------------------------------
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

    variants = list(variants or ROBUSTNESS_VARIANTS)
    teacher_run = os.path.join(runs_dir, "digits-teacher")
    teacher_path = train.teacher_checkpoint(teacher_run)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rslad_tf.bench",
        description="Images/s of the RSLAD training step and the PGD-20 evaluation attack: "
                    "reference configuration vs optimised, timed side by side.")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and repeats, no ablations (a smoke run)")
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="profile (default: gpu when a GPU is visible, else cpu)")
    parser.add_argument("--steps", type=int, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, help="timed repeats (the median is reported)")
    parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                        help="also time each fast path alone (default: on CPU unless --quick)")
    parser.add_argument("--cache-buckets", type=int,
                        help="teacher-cache miss granularity (default 4; fewer = faster XLA "
                             "compilation, less saving)")
    parser.add_argument("--robustness", action="store_true",
                        help="instead: train digits RSLAD per seed with the reference and the "
                             "optimised configurations and compare their PGD-20 accuracy "
                             "(minutes per run on CPU)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of --robustness (default 0 1 2)")
    parser.add_argument("--runs-dir", default=os.path.join("runs", "bench-robustness"),
                        help="run directories of --robustness (reused / resumed if present)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("steps", "repeats", "cache_buckets"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    from rslad_tf.common import runtime

    # --robustness trains like the train CLI (attack shards "auto": exact, so the variants
    # differ only in what they compare); the timing run lays out its own child processes.
    runtime.configure(attack_shards="auto" if args.robustness else 1)
    if args.device == "cpu":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    if args.robustness:
        result = robustness(tuple(args.seeds), runs_dir=args.runs_dir)
        if args.json:
            from rslad_tf.common import fileio

            fileio.write_json(args.json, result)
        return
    result = run(args.device, quick=args.quick, steps=args.steps, repeats=args.repeats,
                 ablations=args.ablations, cache_buckets=args.cache_buckets)
    if args.json:
        from rslad_tf.common import fileio

        fileio.write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(run_cli(main))
