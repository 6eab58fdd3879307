"""PyTorch -> Keras conversion: the same network written in PyTorch here, with random
weights and BatchNorm statistics, must give the same logits after conversion.

The PyTorch modules below are written for this test from the layouts the models' docstrings
cite (kuangliu-style ResNet / MobileNetV2, TRADES WideResNet, DeepMind WideResNet); their
module paths are the keys of the reference checkpoints.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import keras  # noqa: E402

from rslad_tf.interop import convert_teacher as ct  # noqa: E402

torch.set_num_threads(2)
TOL = 1e-4
# Written out here rather than imported, so a typo in rslad_tf.models.wrn shows up.
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


# --- reference PyTorch modules --------------------------------------------------------


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TorchBottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class TorchResNet(nn.Module):
    """ResNet-18 (BasicBlock, expansion 1) or ResNet-50 (Bottleneck, expansion 4)."""

    def __init__(self, depth=18, num_classes=10):
        super().__init__()
        block, expansion, counts = ((TorchBasicBlock, 1, (2, 2, 2, 2)) if depth == 18
                                    else (TorchBottleneck, 4, (3, 4, 6, 3)))
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, 2 if stage > 1 and i == 0 else 1))
                cin = planes * expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(512 * expansion, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, 5):
            out = getattr(self, f"layer{stage}")(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class TorchInvertedResidual(nn.Module):
    def __init__(self, cin, cout, expansion, stride):
        super().__init__()
        planes = expansion * cin
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class TorchMobileNetV2(nn.Module):
    CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks, cin = [], 32
        for expansion, cout, n, stride in self.CFG:
            for i in range(n):
                blocks.append(TorchInvertedResidual(cin, cout, expansion, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class TorchTradesBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return (x if self.equal else self.convShortcut(pre)) + out


class TorchGroup(nn.Module):
    def __init__(self, block, n, cin, cout, stride, attr="layer", **kw):
        super().__init__()
        blocks = [block(cin if i == 0 else cout, cout, stride if i == 0 else 1, **kw)
                  for i in range(n)]
        setattr(self, attr, nn.Sequential(*blocks))
        self.attr = attr

    def forward(self, x):
        return getattr(self, self.attr)(x)


class TorchTradesWRN(nn.Module):
    """TRADES layout, including the unused `sub_block1` of the reference file."""

    def __init__(self, depth=34, widen=10, num_classes=10):
        super().__init__()
        n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = TorchGroup(TorchTradesBlock, n, ch[0], ch[1], 1)
        self.sub_block1 = TorchGroup(TorchTradesBlock, n, ch[0], ch[1], 1)
        self.block2 = TorchGroup(TorchTradesBlock, n, ch[1], ch[2], 2)
        self.block3 = TorchGroup(TorchTradesBlock, n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


class TorchDMBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(cin)
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(cout)
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x):
        pre = F.silu(self.batchnorm_0(x))
        # DeepMind pads like TF "SAME": stride 2 pads right/bottom only.
        v = F.pad(pre, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(F.silu(self.batchnorm_1(self.conv_0(v))))
        return (self.shortcut(pre) if self.has_shortcut else x) + out


class TorchDMWRN(nn.Module):
    def __init__(self, depth=70, widen=16, num_classes=100, mean=None, std=None, buffers=False):
        super().__init__()
        n, ch = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
        mean = torch.tensor(mean).view(3, 1, 1)
        std = torch.tensor(std).view(3, 1, 1)
        if buffers:  # RobustBench's DMWideResNet saves them in the state dict
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
        else:  # DeepMind's file keeps them as plain attributes
            self.mean, self.std = mean, std
        self.init_conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*[
            TorchGroup(TorchDMBlock, n, ch[g], ch[g + 1], (1, 2, 2)[g], attr="block")
            for g in range(3)])
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.layer(self.init_conv((x - self.mean) / self.std))
        out = F.silu(self.batchnorm(out))
        return self.logits(F.avg_pool2d(out, 8).flatten(1))


# --- helpers --------------------------------------------------------------------------


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics (defaults would hide BN bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, nn.Linear):
                # Larger classifier weights: logits of order 1-10, so that a layout bug
                # cannot hide below the tolerance.
                m.weight.mul_(20.0)
                m.bias.copy_(torch.randn(m.out_features, generator=g))
    return model.eval()


def images(n=3, seed=1):
    return np.random.default_rng(seed).random((n, 32, 32, 3), dtype=np.float32)


def torch_logits(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def keras_logits(model, x_nhwc):
    return keras.ops.convert_to_numpy(model(x_nhwc, training=False))


def save(obj, path) -> str:
    torch.save(obj, str(path))
    return str(path)


def cli(capsys, *argv):
    """Run the command line in-process; (exit status, stdout, stderr)."""
    code = ct.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_trades(tmp_path_factory):
    """A reduced TRADES WRN-10-2 saved as a state dict (with sub_block1)."""
    torch.manual_seed(0)
    model = randomize(TorchTradesWRN(depth=10, widen=2))
    path = tmp_path_factory.mktemp("trades") / "wrn10_2.pt"
    return model, save(model.state_dict(), path)


# --- logits parity --------------------------------------------------------------------

CASES = {
    "resnet18": (lambda: TorchResNet(18, 10), "resnet18", 10, {}),
    "resnet50": (lambda: TorchResNet(50, 10), "resnet50", 10, {}),
    "mobilenetv2": (lambda: TorchMobileNetV2(10), "mobilenetv2", 10, {}),
    "wrn34_10-reduced": (lambda: TorchTradesWRN(depth=10, widen=2), "wrn34_10", 10,
                         dict(depth=10, widen_factor=2)),
    "wrn70_16-reduced": (
        lambda: TorchDMWRN(16, 2, 100, *CIFAR100_STATS),
        "wrn70_16", 100, dict(depth=16, widen_factor=2, normalization="cifar100")),
}


FULL_SIZE_TEACHERS = {
    # The paper's teachers at full size: about 1 GB (WRN-70-16) of weights in each framework.
    "wrn34_10": (lambda: TorchTradesWRN(34, 10, 10), "wrn34_10", 10, {}),
    "wrn70_16": (
        lambda: TorchDMWRN(70, 16, 100, *CIFAR100_STATS),
        "wrn70_16", 100, dict(normalization="cifar100")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_match_pytorch(case, tmp_path):
    _check_parity(CASES[case], case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FULL_SIZE_TEACHERS))
def test_full_size_teachers_convert(case, tmp_path):
    _check_parity(FULL_SIZE_TEACHERS[case], case, tmp_path)


def _check_parity(spec, case, tmp_path):
    make, arch, num_classes, kw = spec
    torch.manual_seed(0)
    reference = randomize(make())
    path = save(reference.state_dict(), tmp_path / "model.pt")
    model = ct.convert_state_dict(ct.load_state_dict_file(path), arch, num_classes, **kw)
    x = images()
    expected, got = torch_logits(reference, x), keras_logits(model, x)
    assert got.shape == (3, num_classes)
    diff = float(np.abs(got - expected).max())
    print(f"{case}: max |logit diff| = {diff:.2e} (logit scale {np.abs(expected).max():.2f})")
    assert diff < TOL


def test_cli_end_to_end_with_module_prefix_and_wrapper(small_trades, tmp_path, capsys):
    """DataParallel keys (`module.`) under "state_dict": converted, saved, reloaded."""
    reference, _ = small_trades
    wrapped = {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
               "epoch": 76}
    src = save(wrapped, tmp_path / "ckpt.pt")
    out = tmp_path / "teacher.keras"
    code, stdout, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10,
                            "--widen-factor", 2, "--out", out)
    assert code == 0, err
    assert "wrote" in stdout and out.is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    model = keras.saving.load_model(str(out))
    x = images()
    assert np.abs(keras_logits(model, x) - torch_logits(reference, x)).max() < TOL

    # Never overwrites: a second run refuses and leaves the file as it was.
    before = out.read_bytes()
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10,
                       "--widen-factor", 2, "--out", out)
    assert code == 2 and err.startswith("error:") and "already exists" in err
    assert out.read_bytes() == before


def test_dm_normalization_buffers_and_cifar10_option(tmp_path):
    """RobustBench-style `mean`/`std` buffers set the normalisation; the CIFAR-10 option
    (RSLAD's choice for its CIFAR-100 teacher) is honoured when asked for."""
    torch.manual_seed(0)
    c100, c10 = CIFAR100_STATS, CIFAR10_STATS
    with_buffers = randomize(TorchDMWRN(16, 2, 100, *c100, buffers=True))
    sd = ct.load_state_dict_file(save(with_buffers.state_dict(), tmp_path / "rb.pt"))
    assert "mean" in sd
    model = ct.convert_state_dict(sd, "wrn70_16", 100, depth=16, widen_factor=2)
    x = images()
    assert np.abs(keras_logits(model, x) - torch_logits(with_buffers, x)).max() < TOL

    keras.backend.clear_session()
    rslad_style = randomize(TorchDMWRN(16, 2, 100, *c10))
    sd = ct.load_state_dict_file(save(rslad_style.state_dict(), tmp_path / "dm.pt"))
    model = ct.convert_state_dict(sd, "wrn70_16", 100, depth=16, widen_factor=2,
                                  normalization="cifar10")
    assert np.abs(keras_logits(model, x) - torch_logits(rslad_style, x)).max() < TOL


# --- refusals -------------------------------------------------------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unexpected_key_is_named(small_trades, tmp_path, capsys):
    reference, _ = small_trades
    sd = reference.state_dict()
    sd["block2.layer.0.conv9.weight"] = sd.pop("block2.layer.0.conv1.weight")
    src = save(sd, tmp_path / "bad.pt")
    out = tmp_path / "x.keras"
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10, "--widen-factor", 2,
                       "--out", out)
    assert code == 2
    assert "block2.layer.0.conv9.weight" in _one_line(err)
    assert not out.exists()


def test_missing_key_is_named(small_trades):
    reference, _ = small_trades
    sd = dict(reference.state_dict())
    del sd["block3.layer.0.bn2.running_var"]
    with pytest.raises(ct.ConversionError, match=r"missing key block3\.layer\.0\.bn2\.running_var"):
        ct.convert_state_dict(sd, "wrn34_10", 10, depth=10, widen_factor=2)


def test_shape_mismatch_is_named(small_trades, capsys):
    _, src = small_trades
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10, "--widen-factor", 2,
                       "--num-classes", 100, "--out", os.path.join(os.path.dirname(src), "y.keras"))
    assert code == 2
    line = _one_line(err)
    assert "fc.weight" in line and "(10, 128)" in line and "(100, 128)" in line


def test_wrong_architecture_is_refused(small_trades):
    _, src = small_trades
    with pytest.raises(ct.ConversionError, match="unexpected key 'conv1.weight'|shape mismatch"):
        ct.convert_state_dict(ct.load_state_dict_file(src), "wrn70_16", 10, depth=10,
                              widen_factor=2)


def test_sha256_mismatch_is_refused(small_trades, tmp_path, capsys):
    _, src = small_trades
    out = tmp_path / "z.keras"
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10, "--widen-factor", 2,
                       "--sha256", "0" * 64, "--out", out)
    assert code == 2 and "SHA-256 mismatch" in _one_line(err)
    assert not out.exists()
    # The right digest passes.
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--depth", 10, "--widen-factor", 2,
                       "--sha256", ct.sha256_of(src).upper(), "--out", out)
    assert code == 0, err
    assert out.is_file()


class _CreatesFile:
    """Unpickling this would call open(path, "w"): a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path, capsys):
    marker = tmp_path / "pwned.txt"
    src = save({"conv1.weight": torch.zeros(16, 3, 3, 3), "payload": _CreatesFile(str(marker))},
               tmp_path / "evil.pt")
    assert not marker.exists()
    code, _, err = cli(capsys, src, "--arch", "wrn34_10", "--out", tmp_path / "evil.keras")
    assert code == 2
    assert "weights_only" in _one_line(err)
    assert not marker.exists()
    assert not (tmp_path / "evil.keras").exists()


@pytest.mark.parametrize("argv, message", [
    (["missing.pt", "--arch", "resnet18"], "no such file"),
    (["missing.pt"], "no such file"),  # no --arch needed: it is read from the file
    (["x.pt", "--arch", "resnet18", "--normalization", "cifar10"], "wrn70_16 only"),
    (["x.pt", "--arch", "vgg16"], "invalid choice"),
])
def test_user_mistakes_give_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pt").write_bytes(b"not used")
    code, _, err = cli(capsys, *argv, "--out", "o.keras")
    assert code == 2
    assert message in _one_line(err)


def test_known_teachers_table():
    for name, entry in ct.KNOWN_TEACHERS.items():
        assert entry["arch"] in ct.ARCHS, name
        assert entry["num_classes"] in (10, 100), name
        assert entry["sha256"] is None or (len(entry["sha256"]) == 64
                                           and int(entry["sha256"], 16) >= 0), name
    assert ct.KNOWN_TEACHERS["model_cifar_wrn.pt"]["arch"] == "wrn34_10"
    assert ct.KNOWN_TEACHERS["cifar100_linf_wrn70-16_without.pt"]["num_classes"] == 100


def test_known_teacher_name_pins_its_digest(tmp_path, capsys):
    """A file named like a known teacher with a digest is checked against it."""
    src = tmp_path / "cifar100_linf_wrn70-16_without.pt"
    src.write_bytes(b"not the DeepMind file")
    code, _, err = cli(capsys, src, "--out", tmp_path / "t.keras")
    assert code == 2 and "KNOWN_TEACHERS" in _one_line(err)


def test_python_dash_m_on_its_default_torch_backend(tmp_path):
    """`python -m rslad_tf.convert_teacher` in a fresh process (Keras on torch there):
    the file it writes gives the PyTorch logits under TensorFlow here; a mistake prints
    exactly one line on stderr (no TensorFlow start-up logs)."""
    torch.manual_seed(0)
    reference = randomize(TorchMobileNetV2(10))
    src = save(reference.state_dict(), tmp_path / "mbv2.pt")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[1])
    env["OMP_NUM_THREADS"] = "2"
    out = tmp_path / "mbv2.keras"
    proc = subprocess.run(
        [sys.executable, "-m", "rslad_tf.convert_teacher", src, "--arch", "mobilenetv2",
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2,296,922 parameters" in proc.stdout
    model = keras.saving.load_model(str(out))
    x = images()
    assert np.abs(keras_logits(model, x) - torch_logits(reference, x)).max() < TOL

    sd = reference.state_dict()
    sd["linear.weight"] = sd["linear.weight"][:, :100]
    bad = save(sd, tmp_path / "bad.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "rslad_tf.convert_teacher", bad, "--arch", "mobilenetv2",
         "--out", str(tmp_path / "bad.keras")], capture_output=True, text=True, env=env,
        timeout=300)
    assert proc.returncode == 2
    assert "linear.weight" in _one_line(proc.stderr)


def test_missing_torch_gives_one_line(small_trades, tmp_path, capsys, monkeypatch):
    """PyTorch is optional (requirements-dev.txt): without it the converter says so."""
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    code, _, err = cli(capsys, small_trades[1], "--arch", "wrn34_10", "--out",
                       tmp_path / "t.keras")
    assert code == 2
    assert "needs PyTorch" in _one_line(err) and "requirements-dev.txt" in _one_line(err)
    assert not (tmp_path / "t.keras").exists()


# --- architecture read from the checkpoint (no flags) -------------------------------------

INFERRED_WRNS = {
    # name: (PyTorch model, expected arch, depth, width, classes, wrap as RobustBench does)
    "trades-10-1-c10": (lambda: TorchTradesWRN(10, 1, 10), "wrn34_10", 10, 1, 10, False),
    "trades-16-2-c100-module": (lambda: TorchTradesWRN(16, 2, 100), "wrn34_10", 16, 2, 100, True),
    "dm-10-2-c10-buffers": (lambda: TorchDMWRN(10, 2, 10, *CIFAR10_STATS, buffers=True),
                            "wrn70_16", 10, 2, 10, False),
    "dm-16-1-c100-buffers": (lambda: TorchDMWRN(16, 1, 100, *CIFAR100_STATS, buffers=True),
                             "wrn70_16", 16, 1, 100, True),
}


# Two layouts in the default suite, all four (several depths and widths) with --slow.
_DEFAULT_INFERRED = ("trades-16-2-c100-module", "dm-10-2-c10-buffers")


@pytest.mark.parametrize("case", [c if c in _DEFAULT_INFERRED else
                                  pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(INFERRED_WRNS)])
def test_wideresnets_convert_without_architecture_flags(case, tmp_path, capsys):
    make, arch, depth, width, classes, module_prefix = INFERRED_WRNS[case]
    torch.manual_seed(0)
    reference = randomize(make())
    state = reference.state_dict()
    if module_prefix:  # DataParallel / RobustBench files carry "module." on every key
        state = {f"module.{k}": v for k, v in state.items()}
    src = save(state, tmp_path / "robustbench.pt")
    out = tmp_path / "teacher.keras"
    code, stdout, err = cli(capsys, src, "--out", out)
    assert code == 0, err
    assert f"architecture: {arch}, {classes} classes, depth {depth}, widen factor {width}" in stdout
    model = keras.saving.load_model(str(out))
    x = images()
    expected = torch_logits(reference, x)
    diff = float(np.abs(keras_logits(model, x) - expected).max())
    assert model.output_shape[-1] == classes
    assert diff < TOL, diff
    # The tolerance is tight enough to see a 2% error in one BatchNorm statistic.
    bn = next(m for m in reference.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var.mul_(1.02)
    assert float(np.abs(keras_logits(model, x) - torch_logits(reference, x)).max()) > TOL


def test_infer_architecture_reads_classes_depth_and_width():
    arch, classes, kw, assumed = ct.infer_architecture(TorchTradesWRN(22, 3, 7).state_dict())
    assert (arch, classes, kw) == ("wrn34_10", 7, {"depth": 22, "widen_factor": 3})
    assert any("ReLU" in a for a in assumed) and any("normalisation" in a for a in assumed)
    arch, classes, kw, _ = ct.infer_architecture(TorchResNet(18, 100).state_dict())
    assert (arch, classes, kw) == ("resnet18", 100, {})
    arch, classes, _, assumed = ct.infer_architecture(
        TorchDMWRN(10, 1, 100, *CIFAR100_STATS).state_dict())  # no mean/std buffers
    assert (arch, classes) == ("wrn70_16", 100)
    assert any("not stored" in a for a in assumed)


def test_unknown_layout_names_its_first_key(tmp_path, capsys):
    src = save({"encoder.stem.weight": torch.zeros(4, 3, 3, 3),
                "head.weight": torch.zeros(10, 4)}, tmp_path / "other.pt")
    code, _, err = cli(capsys, src, "--out", tmp_path / "o.keras")
    assert code == 2
    line = _one_line(err)
    assert "cannot infer the architecture" in line and "'encoder.stem.weight'" in line
    assert "--arch" in line and not (tmp_path / "o.keras").exists()


def test_missing_classifier_says_what_could_not_be_inferred(tmp_path, capsys):
    state = {k: v for k, v in TorchTradesWRN(10, 1, 10).state_dict().items()
             if not k.startswith("fc.")}
    code, _, err = cli(capsys, save(state, tmp_path / "headless.pt"), "--out",
                       tmp_path / "o.keras")
    assert code == 2
    line = _one_line(err)
    assert "number of classes" in line and "'fc.weight'" in line and "--num-classes" in line
