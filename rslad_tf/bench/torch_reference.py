"""The reference RSLAD algorithm in plain PyTorch, the benchmark's peer on the same device.

Written from the RSLAD paper (Zi et al., ICCV 2021, section 4 and its training settings)
and the layouts of its models; it imports nothing but torch, so it runs on a machine with
no TensorFlow and no Keras. One training step (`ReferenceStep`):

- T(x): the frozen teacher in eval mode, no gradient;
- x': 10 steps of L-inf PGD on the summed KL(T(x) || S(x')), student in eval mode, from
  x + 0.001 N(0, 1), steps of 2/255 projected on the 8/255 ball and [0, 1];
- loss, student in train mode: 5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x)), each the
  element-wise ``p * (log(p + 1e-5) - log_softmax(logits))`` averaged over batch x classes
  (the reference code's reduction), p = softmax(T(x));
- SGD, learning rate 0.1, momentum 0.9, coupled weight decay 2e-4.

Variants (`ReferenceStep` arguments): eager float32, as the reference code runs; and the
strongest plain-PyTorch peer: the models through ``torch.compile``, channels-last memory
layout, the forward passes under bfloat16 autocast (the KL objectives in float32).

Models (NCHW, PyTorch's default initialisation): the CIFAR ResNet-18 of the RSLAD code
(kuangliu layout: 3x3 stem, no max-pool, post-activation BasicBlocks, 1x1 projection
shortcuts) and TRADES' WideResNet-34-10 (pre-activation blocks, the projection shortcut on
the pre-activated input); the same layouts as `rslad_tf.models` ``resnet18`` and
``wrn34_10``, with the same size arguments (``base_width``; ``depth``, ``widen_factor``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPSILON = 8 / 255
STEP_SIZE = 2 / 255
ATTACK_STEPS = 10
START_STD = 0.001  # the attack starts at x + START_STD * N(0, 1)
ADV_WEIGHT = 5 / 6
NAT_WEIGHT = 1 / 6
LOG_EPS = 1e-5  # added to the target probabilities inside the reference KL's log
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 2e-4


class _BasicBlock(nn.Module):
    """ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: widths w, 2w, 4w, 8w (w = ``base_width``, 64), two blocks each."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, base_width: int = 64):
        super().__init__()
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        blocks, in_planes = [], w
        for stage, stride in enumerate((1, 2, 2, 2)):
            planes = w * 2 ** stage
            for i in range(2):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(out.mean(dim=(2, 3)))


class _WideBlock(nn.Module):
    """TRADES' pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the
    input (same width) or a 1x1 projection of the pre-activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.equal = in_planes == out_planes
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.project = (None if self.equal
                        else nn.Conv2d(in_planes, out_planes, 1, stride, bias=False))

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.project(pre))


class WideResNet(nn.Module):
    """TRADES WideResNet-``depth``-``widen_factor`` (default 34-10, 46.16 M parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 34,
                 widen_factor: int = 10):
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks = []
        for group, stride in enumerate((1, 2, 2), start=1):
            for i in range(n):
                blocks.append(_WideBlock(widths[group - 1] if i == 0 else widths[group],
                                         widths[group], stride if i == 0 else 1))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


def build(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """The PyTorch model of `rslad_tf.models` name ``resnet18`` or ``wrn34_10``, with the
    same size arguments."""
    if name == "resnet18":
        return ResNet18(num_classes, **kwargs)
    if name == "wrn34_10":
        return WideResNet(num_classes, **kwargs)
    raise ValueError(f"no PyTorch reference model {name!r} (resnet18 or wrn34_10)")


def rslad_kl(teacher_probs, logits):
    """RSLAD's KL(T || S): ``p * (log(p + 1e-5) - log_softmax(logits))`` averaged over
    batch x classes (Zi et al. 2021; the reduction of the reference code)."""
    log_q = F.log_softmax(logits.float(), dim=1)
    return (teacher_probs * (torch.log(teacher_probs + LOG_EPS) - log_q)).mean()


def rslad_loss(teacher_probs, logits_adv, logits_nat):
    """The outer loss: 5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x))."""
    return (ADV_WEIGHT * rslad_kl(teacher_probs, logits_adv)
            + NAT_WEIGHT * rslad_kl(teacher_probs, logits_nat))


def rslad_attack(student, x, teacher_probs, *, noise, epsilon=EPSILON, step_size=STEP_SIZE,
                 steps=ATTACK_STEPS, autocast=None):
    """x' of the inner maximisation (student in eval mode): from x + 0.001 ``noise``,
    ``steps`` signed-gradient steps on the summed KL(T(x) || S(x')), each projected on the
    L-inf ball of radius ``epsilon`` around x and on [0, 1]. ``autocast``: a context
    factory for the student's forward passes (the objective stays float32)."""
    student.eval()
    x_adv = (x + START_STD * noise).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            if autocast is None:
                logits = student(x_adv)
            else:
                with autocast():
                    logits = student(x_adv)
            objective = F.kl_div(F.log_softmax(logits.float(), dim=1), teacher_probs,
                                 reduction="sum")
            (grad,) = torch.autograd.grad(objective, [x_adv])
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0.0, 1.0)
    return x_adv.detach()


class ReferenceStep:
    """One RSLAD training step of the reference algorithm (module docstring) on
    ``student`` with the frozen ``teacher``; ``compiled`` runs both models through
    ``torch.compile``, ``bfloat16`` their forward passes under autocast, ``channels_last``
    keeps images and weights channels-last (``compile_backend``: torch.compile's backend;
    "aot_eager" checks the compiled path without generating kernels). Call with a batch of
    images [B, C, H, W] in [0, 1]; returns the loss (a tensor: nothing waits for the
    device)."""

    def __init__(self, student, teacher, *, attack_steps=ATTACK_STEPS, compiled=False,
                 bfloat16=False, channels_last=False, compile_backend="inductor", seed=0):
        self.student, self.teacher = student, teacher
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(student.parameters(), lr=LEARNING_RATE,
                                         momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.attack_steps = attack_steps
        self.student_fn = torch.compile(student, backend=compile_backend) if compiled else student
        self.teacher_fn = torch.compile(teacher, backend=compile_backend) if compiled else teacher
        device = next(student.parameters()).device
        self.autocast = None
        if bfloat16:
            self.autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def _forward(self, model, x):
        if self.autocast is None:
            return model(x)
        with self.autocast():
            return model(x)

    def __call__(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            teacher_probs = F.softmax(self._forward(self.teacher_fn, x).float(), dim=1)
        noise = torch.randn(x.shape, generator=self.generator, device=x.device,
                            dtype=x.dtype)
        x_adv = rslad_attack(self.student_fn, x, teacher_probs, noise=noise,
                             steps=self.attack_steps, autocast=self.autocast)
        self.student.train()
        loss = rslad_loss(teacher_probs, self._forward(self.student_fn, x_adv),
                          self._forward(self.student_fn, x))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TorchRunner:
    """The reference step on a profile's models (`rslad_tf.bench.profiles.Profile`: its
    model names, sizes, image shape, batch and attack steps), with random images already on
    the device (CUDA when there is one, else the CPU), ready to time. The same interface as
    `rslad_tf.bench.backend_step.KerasRunner`: ``warm_up``, ``time``, ``info``."""

    def __init__(self, profile, *, compiled=False, bfloat16=False, channels_last=False,
                 compile_backend="inductor", seed=0, num_batches=4):
        import time

        self._clock = time
        torch.manual_seed(seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.profile = profile
        h, w, c = profile.image_shape
        student = build(profile.student[0], profile.num_classes, in_channels=c,
                        **profile.student[1]).to(self.device)
        teacher = build(profile.teacher[0], profile.num_classes, in_channels=c,
                        **profile.teacher[1]).to(self.device)
        self.step = ReferenceStep(student, teacher, attack_steps=profile.attack_steps,
                                  compiled=compiled, bfloat16=bfloat16,
                                  channels_last=channels_last,
                                  compile_backend=compile_backend, seed=seed)
        self.options = dict(compiled=compiled, bfloat16=bfloat16, channels_last=channels_last,
                            compile_backend=compile_backend if compiled else None)
        g = torch.Generator().manual_seed(seed)
        self.batches = [torch.rand((profile.batch_size, c, h, w), generator=g).to(self.device)
                        for _ in range(num_batches)]
        self._count = 0

    def _steps(self, steps: int) -> None:
        for _ in range(steps):
            loss = self.step(self.batches[self._count % len(self.batches)])
            self._count += 1
        loss.item()
        _sync(self.device)

    def warm_up(self, steps: int) -> float:
        """Run ``steps`` steps (compilation happens in the first ones); seconds."""
        started = self._clock.perf_counter()
        self._steps(steps)
        return self._clock.perf_counter() - started

    def time(self, steps: int):
        """(images/s wall clock, images per CPU second of this process) of ``steps`` steps."""
        start, start_cpu = self._clock.perf_counter(), self._clock.process_time()
        self._steps(steps)
        images = steps * self.profile.batch_size
        return (images / (self._clock.perf_counter() - start),
                images / max(self._clock.process_time() - start_cpu, 1e-9))

    def info(self) -> dict:
        """What this runner is, for the report (the GPU named: the figures' device)."""
        out = {"backend": "pytorch", "torch": torch.__version__,
               "device": "gpu" if self.device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), **self.options}
        if self.device.type == "cuda":
            out["device_name"] = torch.cuda.get_device_name(self.device)
        return out
