"""The benchmark (`python -m rslad_tf.bench`, `scripts/device_bench.sh`) can be trusted:

- its PyTorch peer (`rslad_tf.bench.torch_reference`) computes the RSLAD step of the paper
  (docs/paper.md section 1): the attack, the loss and the SGD update, each recomputed here
  from the formulas, with the tolerance shown to reject a deliberately wrong variant;
- its command line answers bad input with one ``error:`` line, no traceback;
- ``--smoke`` runs end to end on a CPU and prints positive finite figures;
- the device bundle holds the package wheel and fits what the device tool carries.

The PyTorch parts run in float32 on models of a few hundred weights (the reference casts
its logits to float32 whatever the model's dtype).
"""

import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from rslad_tf.bench import torch_reference as ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS, STEP = 8 / 255, 2 / 255
B, C, HW = 6, 10, 8


# -- the PyTorch reference step against the formulas -------------------------------------

class Tiny(torch.nn.Module):
    """conv - BatchNorm - ReLU - global mean - linear: enough to see BatchNorm's modes."""

    def __init__(self, width=4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, C)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _models(seed=0):
    torch.manual_seed(seed)
    student, teacher = Tiny(), Tiny(width=6)
    # A teacher that is not uniform: larger logits, so KL(T || S) is far from zero.
    with torch.no_grad():
        teacher.fc.weight.mul_(20.0)
    return student, teacher


def _images(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((B, 3, HW, HW), generator=g)
    # Pixels at the edges of [0, 1], where the attack must clip.
    x[0, 0] = 0.0
    x[1, 1] = 1.0
    return x


def _teacher_probs(teacher, x):
    teacher.eval()
    with torch.no_grad():
        return F.softmax(teacher(x), dim=1)


def kl_elements(p, logits, log_eps):
    """p_c (log(p_c + log_eps) - log softmax(logits)_c), element by element."""
    return p * (torch.log(p + log_eps) - torch.log_softmax(logits, dim=1))


def paper_attack(model, x, p, noise, steps):
    """The paper's inner maximisation, written here: student in eval mode, from
    x + 0.001 noise, signed steps of 2/255 on KL(T(x) || S(x')) summed over the batch, each
    step projected on the 8/255 ball around x and on [0, 1]."""
    model.eval()
    x_adv = x + 0.001 * noise
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        objective = kl_elements(p, model(x_adv), 0.0).sum()
        (grad,) = torch.autograd.grad(objective, [x_adv])
        x_adv = x_adv.detach() + STEP * torch.sign(grad)
        x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - EPS), x + EPS), 0.0, 1.0)
    return x_adv.detach()


def paper_loss(p, logits_adv, logits_nat, *, adv_weight=5 / 6, nat_weight=1 / 6,
               reduction="mean", log_eps=1e-5):
    """5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x)), each KL element-wise with log(p + 1e-5)
    and averaged over batch x classes ("mean", the RSLAD code's reduction; "batchmean" sums
    over classes and averages over the batch: a wrong variant)."""
    def reduce(e):
        return e.mean() if reduction == "mean" else e.sum() / e.shape[0]

    return (adv_weight * reduce(kl_elements(p, logits_adv, log_eps))
            + nat_weight * reduce(kl_elements(p, logits_nat, log_eps)))


def paper_step(student, teacher, x, noise, momenta, *, steps, decay="coupled", momentum=0.9,
               **loss_variant):
    """One RSLAD step by hand: the attack, the loss in train mode (x' then x, as the
    reference evaluates them), then SGD with learning rate 0.1, momentum 0.9 and weight decay
    2e-4 added to the gradient (``decay="decoupled"``: subtracted from the weights instead; a
    wrong variant). ``momenta``: the momentum buffers, one per parameter, updated in place
    (empty before the first step: PyTorch starts a buffer at the first gradient)."""
    p = _teacher_probs(teacher, x)
    x_adv = paper_attack(student, x, p, noise, steps)
    student.train()
    loss = paper_loss(p, student(x_adv), student(x), **loss_variant)
    params = list(student.parameters())
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for i, (w, g) in enumerate(zip(params, grads)):
            if decay == "coupled":
                g = g + 2e-4 * w
            else:
                w.mul_(1 - 0.1 * 2e-4)
            momenta[i] = g.clone() if i not in momenta else momentum * momenta[i] + g
            w.sub_(0.1 * momenta[i])
    return loss.detach(), x_adv


@pytest.fixture
def one_torch_thread():
    """Tiny models on one thread: on 2 busy cores PyTorch's default two threads spin and
    made these tests 60x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _relative(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _flat(model):
    return torch.cat([w.detach().reshape(-1) for w in model.parameters()])


def test_reference_attack_is_the_papers_and_stays_in_the_ball(one_torch_thread):
    student, teacher = _models()
    x = _images()
    p = _teacher_probs(teacher, x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    bn_before = (student.bn.running_mean.clone(), student.bn.running_var.clone())
    got = ref.rslad_attack(student, x, p, noise=noise, steps=10)
    # Eval mode: the attack's forward passes leave BatchNorm's statistics alone.
    assert torch.equal(student.bn.running_mean, bn_before[0])
    assert torch.equal(student.bn.running_var, bn_before[1])
    want = paper_attack(copy.deepcopy(student), x, p, noise, 10)
    # The same signed steps: equal pixels but for sign flips of gradients at rounding level.
    assert float((got == want).float().mean()) >= 0.99
    assert float((got - x).abs().max()) <= EPS + 1e-6
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
    # It is an ascent that reaches the ball's surface (10 steps of 2/255 against 8/255).
    assert float((got - x).abs().max()) >= EPS - 1e-6
    with torch.no_grad():
        start, end = (float(kl_elements(p, student.eval()(z), 0.0).sum())
                      for z in (x + 0.001 * noise, got))
    assert end > start
    # A wrong variant (a start without the noise) changes the result: the check can fail.
    unseeded = paper_attack(copy.deepcopy(student), x, p, torch.zeros_like(x), 10)
    assert float((unseeded == got).float().mean()) < 0.99


def test_reference_loss_and_update_are_the_papers(one_torch_thread):
    """Two `ReferenceStep` calls against `paper_step` from the same weights, batches and
    noise: the same loss (relative 1e-5), and the same weights and BatchNorm statistics
    after each step (displacement from the start, relative 1e-4). Each deliberately wrong
    variant misses: weights swapped (loss off by 1e-4 relative here), "batchmean" (0.9),
    log(p) without the 1e-5 (3e-4); decoupled weight decay (displacement off by 5e-3 after
    the second step) and no momentum (0.5). The paper's variant is within 4e-6."""
    student, teacher = _models()
    start = copy.deepcopy(student)
    batches = [_images(1), _images(5)]
    step = ref.ReferenceStep(student, teacher, attack_steps=3, seed=7)
    # ReferenceStep draws its start noise from its own generator, seeded with `seed`.
    g = torch.Generator().manual_seed(7)
    noises = [torch.randn(x.shape, generator=g) for x in batches]

    variants = {"paper": {}, "weights swapped": dict(adv_weight=1 / 6, nat_weight=5 / 6),
                "batchmean": dict(reduction="batchmean"), "log p without 1e-5":
                dict(log_eps=0.0), "decoupled decay": dict(decay="decoupled"),
                "no momentum": dict(momentum=0.0)}
    hand = {name: copy.deepcopy(start) for name in variants}
    momenta = {name: {} for name in variants}
    w0 = _flat(start)
    for x, noise in zip(batches, noises):
        loss = step(x)
        for name, kwargs in variants.items():
            want, _ = paper_step(hand[name], teacher, x, noise, momenta[name], steps=3,
                                 **kwargs)
            close_loss = abs(float(loss) - float(want)) <= 1e-5 * abs(float(want))
            moved = _relative(_flat(student) - w0, _flat(hand[name]) - w0)
            if name == "paper":
                assert close_loss, (float(loss), float(want))
                assert moved <= 1e-4, moved
                assert torch.allclose(student.bn.running_mean, hand[name].bn.running_mean,
                                      rtol=1e-5, atol=1e-7)
                assert torch.allclose(student.bn.running_var, hand[name].bn.running_var,
                                      rtol=1e-5, atol=1e-7)
            elif name in ("weights swapped", "batchmean", "log p without 1e-5"):
                assert not close_loss, name
            elif x is batches[1]:
                # The two optimiser variants equal the paper's after one step (a fresh
                # momentum buffer; decay applied once either way) and part at the second.
                assert moved > 1e-4, (name, moved)
        assert float(loss) > 0


def test_reference_loss_is_the_toolkits_rslad_loss(one_torch_thread):
    """The peer's loss and `rslad_tf.losses.rslad_loss` (default reduction) agree: the
    benchmark compares like with like."""
    from rslad_tf import losses

    g = torch.Generator().manual_seed(3)
    t, s_adv, s_nat = (4 * torch.randn((B, C), generator=g) for _ in range(3))
    peer = float(ref.rslad_loss(F.softmax(t, dim=1), s_adv, s_nat))
    ours = losses.rslad_loss(t.numpy(), s_adv.numpy(), s_nat.numpy())
    ours = float(np.asarray(ours[0] if isinstance(ours, tuple) else ours))
    assert abs(peer - ours) <= 1e-5 * abs(ours)
    swapped = float(ref.rslad_loss(F.softmax(t, dim=1), s_nat, s_adv))
    assert abs(swapped - ours) > 1e-5 * abs(ours)


# -- the command line ---------------------------------------------------------------------

def _bench(args, timeout=120, env=None):
    environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "rslad_tf.bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environment)


BAD_INPUT = [
    (["--backend", "mxnet"], "argument --backend: invalid choice: 'mxnet'"),
    (["--profile", "cpu-tiny"], "argument --profile: invalid choice: 'cpu-tiny'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--backend", "torch", "--steps", "0"], "--steps must be positive"),
    (["--backend", "torch", "--warmup", "-1"], "--warmup must be positive"),
    (["--smoke"], "--smoke goes with --backend or --profile cpu-paper"),
    (["--backend", "torch", "--device", "cpu"], "the GPU profile"),
    (["--profile", "cpu-paper", "--device", "gpu"], "--profile cpu-paper is a CPU profile"),
    (["--backend", "torch", "--robustness"], "--robustness cannot be combined"),
    (["--backend", "torch", "--smoke", "--json", "no/such/folder/out.json"],
     "--json no/such/folder/out.json: no folder"),
]


def test_bad_input_is_one_error_line():
    """Each mistake: exit status 2, nothing on stdout, one ``error:`` line naming it. (One
    test for all: each case is a 0.2 s process.)"""
    for args, message in BAD_INPUT:
        done = _bench(args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == "", args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert message in lines[0], (args, lines[0])


def test_gpu_profile_without_a_gpu_is_one_error_line():
    """``--device gpu`` where no GPU is visible stops at start-up with one line, instead of
    timing the GPU profile on the CPU."""
    done = _bench(["--device", "gpu", "--smoke", "--backend", "torch"], timeout=240,
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device gpu: "), done.stderr
    assert "sees no GPU" in lines[0] and "Traceback" not in done.stdout


def test_help_exits_zero():
    done = _bench(["--help"])
    assert done.returncode == 0 and "--backend" in done.stdout and done.stderr == ""


# -- --smoke end to end -------------------------------------------------------------------

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


def _report_rows(stdout, names):
    """{variant: (images/s, ratio to the reference)} parsed from the printed table."""
    table = stdout.split("RSLAD training step on", 1)[1]
    rows = {}
    for name in names:
        match = re.search(rf"^  {re.escape(name)}\s+{NUMBER}  x{NUMBER} \(x{NUMBER}\)", table,
                          re.MULTILINE)
        assert match, (name, table)
        rows[name] = tuple(float(v) for v in match.groups())
    return rows


def _assert_positive_finite(*values):
    for v in values:
        assert math.isfinite(v) and v > 0, v


def test_peer_comparison_runs_and_reports_numbers(tmp_path):
    """`peers.compare` (what ``--backend`` runs) on the smoke profile with the eager
    reference and Keras' torch backend, in a fresh process: a positive finite images/s and
    ratio for each, printed and in the JSON; on a machine without TensorFlow, as the GPU
    machines are (a stand-in ``tensorflow`` that fails to import comes first on the path).
    (The full ``--smoke`` command line, with the compiled reference, is a slow test.)"""
    out = tmp_path / "peers.json"
    (tmp_path / "no_tf" / "tensorflow").mkdir(parents=True)
    (tmp_path / "no_tf" / "tensorflow" / "__init__.py").write_text(
        "raise ImportError('no TensorFlow here (test stand-in)')\n")
    code = (
        "import json, sys\n"
        "try:\n"
        "    import tensorflow\n"
        "    sys.exit('the TensorFlow stand-in was not used')\n"
        "except ImportError:\n"
        "    pass\n"
        "from rslad_tf.bench import peers\n"
        "from rslad_tf.bench.profiles import PEER_PROFILES, smoke\n"
        "variants = [v for v in peers.gpu_variants(['torch'], False, 'aot_eager')\n"
        "            if v[0] in (peers.REFERENCE, 'torch float32')]\n"
        "r = peers.compare(smoke(PEER_PROFILES['gpu']), variants, steps=1, repeats=1,\n"
        "                  warmup=1, hide_gpu=True, device='cpu')\n"
        "json.dump(r, open(sys.argv[1], 'w'))\n")
    # A guard against a hang, not a speed check: 23 s here beside a training job. The smoke
    # profile's width-4 ResNet-18 once hung here for good in oneDNN's strided 1x1 kernel
    # (tests/test_torch_conv_guard.py), which is what this limit stops.
    done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, text=True,
                          capture_output=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=f"{tmp_path / 'no_tf'}:{ROOT}"))
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["pytorch reference, eager float32", "torch float32"]
    rows = _report_rows(done.stdout, names)
    for name in names:
        _assert_positive_finite(*rows[name])
    assert rows[names[0]][1:] == (1.0, 1.0)  # the reference against itself
    result = json.loads(out.read_text())
    for name in names:
        entry = result["variants"][name]
        _assert_positive_finite(entry["images_per_s"], entry["vs_reference"],
                                entry["tflops"], entry["projected_300_epoch_hours"])
        assert entry["device"] == "cpu"
    # The printed figures are the JSON's (rounded to the table's one decimal).
    assert abs(rows[names[1]][0] - result["variants"][names[1]]["images_per_s"]) <= 0.05
    assert not result["variants"][names[1]]["tensorflow_imported"]


def test_summary_figures_follow_from_the_samples():
    """`peers.summarise` / `report` on made-up samples: the ratios are of the medians and
    the median of per-round ratios, TFLOP/s is images/s x the step's FLOPs (attack steps x
    2 F_s + 6 F_s + F_t), the projection is 300 x 50,000 images at the rate; a variant that
    failed is reported as not measured."""
    from rslad_tf.bench import peers
    from rslad_tf.bench.profiles import PEER_PROFILES

    profile = PEER_PROFILES["gpu"]
    samples = {peers.REFERENCE: [10.0, 12.0, 11.0], peers.COMPILED_REFERENCE: [20.0, 26.0, 18.0],
               "jax float32": [40.0, 30.0, 50.0]}
    f_s, f_t = 1.1e9, 13e9
    infos = {name: {"device": "gpu", "backend": "x"} for name in samples}
    infos[peers.REFERENCE].update(student_forward_flops=f_s, teacher_forward_flops=f_t,
                                  device_name="Some GPU")
    variants = [(name, {}) for name in samples] + [("torch float32", {})]
    result = peers.summarise(profile, variants, samples, samples, infos, {},
                             {"torch float32": "no torch here"})
    jax = result["variants"]["jax float32"]
    assert jax["vs_reference"] == pytest.approx(40 / 11)
    assert jax["paired_vs_reference"] == pytest.approx(4.0)  # median of 4, 2.5, 50/11
    assert jax["vs_compiled_reference"] == pytest.approx(40 / 20)
    per_image = (2 * profile.attack_steps + 6) * f_s + f_t
    assert jax["tflops"] == pytest.approx(40 * per_image / 1e12)
    assert jax["projected_300_epoch_hours"] == pytest.approx(300 * 50000 / 40 / 3600)
    assert result["variants"]["torch float32"]["error"] == "no torch here"
    lines = []
    result.update(device="gpu", steps=10, repeats=3)
    peers.report(result, log=lines.append)
    text = "\n".join(lines)
    assert "on gpu (Some GPU)" in text and "torch float32" in text and "not measured" in text
    rows = _report_rows(text, list(samples))
    assert rows["jax float32"] == (40.0, round(40 / 11, 2), 4.0)


def test_variants_have_unique_names():
    """Every variant is one worker, keyed by its name: a backend named twice is timed once."""
    from rslad_tf.bench import peers

    for variants in (peers.gpu_variants(["jax", "torch", "jax"]),
                     peers.cpu_paper_variants(["tensorflow", "tensorflow", "torch"], 2)):
        names = [name for name, _ in variants]
        assert len(names) == len(set(names)), names
    assert [n for n, _ in peers.gpu_variants(["jax", "jax"])] == [
        peers.REFERENCE, peers.COMPILED_REFERENCE, "jax float32", "jax bfloat16"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorflow", "jax"])
def test_smoke_command_line(backend, tmp_path):
    """``python -m rslad_tf.bench --device cpu --smoke --backend B``: exit 0, every
    variant measured, positive finite images/s and ratios printed (about a minute each on
    2 loaded cores)."""
    out = tmp_path / "smoke.json"
    done = _bench(["--device", "cpu", "--smoke", "--backend", backend, "--json", str(out)],
                  timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    names = ["pytorch reference, eager float32", "pytorch reference, compiled bf16",
             f"{backend} float32", f"{backend} bfloat16"]
    rows = _report_rows(done.stdout, names)
    for name in names:
        _assert_positive_finite(*rows[name])
    result = json.loads(out.read_text())
    assert set(result["variants"]) == set(names)
    assert all("error" not in e for e in result["variants"].values())
    if backend != "tensorflow":
        assert not any(e["tensorflow_imported"] for e in result["variants"].values())
    else:  # TensorFlow's native start-up lines are filtered in the workers too
        assert "oneDNN" not in done.stderr and "absl::InitializeLog" not in done.stderr, \
            done.stderr[-3000:]


@pytest.mark.slow
def test_smoke_cpu_paper_profile():
    """``--profile cpu-paper --smoke --backend torch``: the public ``fit`` path against the
    reference, exit 0, positive finite figures."""
    done = _bench(["--profile", "cpu-paper", "--smoke", "--backend", "torch"], timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _report_rows(done.stdout, ["pytorch reference, eager float32",
                                      "torch fit, defaults"])
    for values in rows.values():
        _assert_positive_finite(*values)


# -- scripts/device_bench.sh --------------------------------------------------------------

SCRIPT = os.path.join(ROOT, "scripts", "device_bench.sh")


def test_device_script_usage_and_missing_bundle(tmp_path):
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("usage: ")
    env = dict(os.environ, OUT=str(tmp_path / "out"), BUNDLE=str(tmp_path / "none"))
    done = subprocess.run(["bash", SCRIPT, "run"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no bundle at {tmp_path / 'none'}: run '{SCRIPT} bundle' first"]
    # `bundle DIR` empties DIR first: a folder with anything but a bundle in it is refused
    # before any download, and left as it was.
    keep = tmp_path / "work"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    done = subprocess.run(["bash", SCRIPT, "bundle", str(keep)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {keep} holds files other than a bundle's; name an empty or new folder"]
    assert (keep / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bench_args, timeout, status", [("--steps 0", "60", 2),
                                                         ("", "2", 124)])
def test_device_script_run_reports_the_benchmarks_exit_status(tmp_path, bench_args, timeout,
                                                             status):
    """``run`` exits with the benchmark's own status and writes it to env.txt: a refused
    flag (2), and the timeout stopping it (124; it was 1 when the status was read after
    another command). An empty bundle: this interpreter has everything already."""
    (tmp_path / "bundle").mkdir()
    env = dict(os.environ, BUNDLE=str(tmp_path / "bundle"), OUT=str(tmp_path / "out"),
               PYTHON=sys.executable, SMOKE="1", BACKENDS="torch", BENCH_ARGS=bench_args,
               BENCH_TIMEOUT=timeout)
    done = subprocess.run(["bash", SCRIPT, "run"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == status, (done.stdout[-2000:], done.stderr[-2000:])
    assert f"benchmark exit status {status}" in (tmp_path / "out" / "env.txt").read_text()


@pytest.mark.slow
def test_device_bundle_holds_the_package_and_fits(tmp_path):
    """``scripts/device_bench.sh bundle DIR`` (needs the package registry: it downloads the
    pinned wheels): the rslad_tf wheel with the benchmark in it, Keras, every pin of
    scripts/device_requirements.txt, under 64 MiB; the checkout gets no build/ from it."""
    build_before = os.path.exists(os.path.join(ROOT, "build", "lib"))
    bundle = tmp_path / "bundle"
    done = subprocess.run(["bash", SCRIPT, "bundle", str(bundle)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = sorted(p.name for p in bundle.glob("*.whl"))
    (own,) = [w for w in wheels if w.startswith("rslad_tf-")]
    with zipfile.ZipFile(bundle / own) as archive:
        names = set(archive.namelist())
    for module in ("rslad_tf/bench/cli.py", "rslad_tf/bench/torch_reference.py",
                   "rslad_tf/methods/rslad.py"):
        assert module in names
    pins = [line.split("==")[0].lower().replace("-", "_")
            for line in open(os.path.join(ROOT, "scripts", "device_requirements.txt"))
            if line.strip() and not line.startswith("#")]
    have = {w.split("-")[0].lower() for w in wheels}
    assert set(pins) <= have, set(pins) - have
    total = sum(p.stat().st_size for p in bundle.iterdir())
    assert total < 64 * 2**20, total
    assert (bundle / "SOURCE").read_text().strip()
    assert os.path.exists(os.path.join(ROOT, "build", "lib")) == build_before


@pytest.mark.slow
def test_device_script_runs_the_smoke_benchmark_from_its_bundle(tmp_path):
    """``SMOKE=1 scripts/device_bench.sh run`` on this CPU from a fresh bundle (installed
    into a temporary folder, run from an empty one): exit 0, the figures in OUT."""
    bundle = tmp_path / "bundle"
    done = subprocess.run(["bash", SCRIPT, "bundle", str(bundle)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    env = dict(os.environ, BUNDLE=str(bundle), OUT=str(out), SMOKE="1", BACKENDS="torch",
               PYTHON=sys.executable, BENCH_TIMEOUT="500")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", SCRIPT, "run"], capture_output=True, text=True,
                          timeout=560, env=env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    result = json.loads((out / "bench_gpu.json").read_text())
    for entry in result["variants"].values():
        _assert_positive_finite(entry["images_per_s"])
    assert "benchmark exit status 0" in (out / "env.txt").read_text()
    shutil.rmtree(bundle)
