"""The benchmark's child processes, one per thread layout, and the parent's side of them.

A process's TensorFlow thread pools are fixed once it starts, and the attack shards need
their own layout (inter-op = shards, intra-op = cores / shards) while the reference is
fastest with the default one (all cores intra-op). So each layout gets a child process
(`LayoutProcess` in the parent, `_serve` in the child, a `Layout` inside it); the parent
asks them in turn to time their configurations (`time_round_robin`), and a process waits
idle while another is timed.

Timing: the step function Keras' ``fit`` runs (``train_function``) is called directly on an
iterator; warm-up steps (tracing, XLA compilation, filling the cache) are excluded; each
configuration is timed ``repeats`` times for ``steps`` steps, round robin across the
configurations (so load drift on a shared machine hits all of them alike). The device is
synchronised at the end of each timed repeat.
"""

from __future__ import annotations

import statistics
import time

from rslad_tf.bench.child import ChildProcess
from rslad_tf.bench.configurations import TrainStepConfig, make_data
from rslad_tf.bench.flops import model_flops
from rslad_tf.bench.profiles import Profile


class Layout:
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
        self.configs = {name: TrainStepConfig(name, profile, self.teacher, self.x, self.y,
                                              **options)
                        for name, options in specs}

    def flops(self):
        """Forward FLOPs of one image through the student and through the teacher."""
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
        """What configuration `name` did besides its speed: folding, cache counters."""
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
        layout = Layout(profile, specs)
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


class LayoutProcess(ChildProcess):
    """Parent-side handle of one `_serve` child."""

    def __init__(self, shards: int, hide_gpu: bool, profile: Profile, specs):
        super().__init__(_serve, (shards, hide_gpu, profile, list(specs)))
        self.receive()

    def call(self, method, *args, **kwargs):
        """Call `Layout.<method>(*args, **kwargs)` in the child; its return value."""
        self.conn.send((method, args, kwargs))
        return self.receive()


def time_round_robin(workers, names, *, steps, repeats, cache_state=None):
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

