"""An independent PyTorch implementation of the training step of each method, for the
step-parity tests (tests/test_step_parity.py).

Written from the methods' reference algorithms (docs/paper.md sections 1-2 and the authors'
public training scripts: yaodongyu/TRADES, goldblum/AdversarialDistillation, ZFancy/IAD,
zibojia/RSLAD; facts only) and deliberately importing nothing from rslad_tf: the
settings below are the references' own, not our presets, so a preset that drifts from its
reference shows up as a parity failure. Everything runs in float64 (see `SmallCNN`).

Reference behaviour reproduced here, per method:

- natural: CE(S(x), y), batch mean, student in training mode.
- SAT (Madry et al. 2018): PGD on the summed CE with the student in eval mode, from
  x + U(-eps, eps) clipped to [0, 1] before the first step (Madry's code, and the "Madry"
  PGD of IAD's attack_generator.py that trains its AT teacher), then CE(S(x'), y), batch
  mean, in training mode.
- TRADES (Zhang et al. 2019, trades.py): PGD on KL(S(x) || S(x')) summed, student in eval
  mode, from x + 0.001 N(0, 1) (not clipped before the first step); then in training mode
  CE(S(x), y) + beta * KL(S(x) || S(x')) summed over classes and divided by the batch
  ("batchmean"). The script evaluates S(x) twice in training mode (once for the CE, once
  for the KL target), so BatchNorm's running statistics move three times per step.
- ARD (Goldblum et al. 2020, ARD.py): PGD on the summed CE with the student in training
  mode (BatchNorm statistics move at every attack step), from x + U(-eps, eps) not clipped
  before the first step, then alpha * tau^2 * KLDivLoss()(log S^tau(x'), T^tau(x)) with
  PyTorch's default reduction "mean" over batch x classes, plus (1 - alpha) * CE(S(x), y);
  tau = 30, alpha = 1.
- IAD-I (Zhu et al. 2022, IAD-I.py): ARD's attack (its own copy, the same unclipped
  start); in the warm-up tau^2 * sum_i KL_i(T^tau(x) || S^tau(x')) / B (per-sample sums
  averaged over the batch, i.e. "batchmean"), after it that
  + mean_i (1 - a_i) KL_i(S(x) || S(x')), a_i = softmax(T(x'_i))[y_i]^beta (no gradient
  through a_i; the gradient does flow through the S(x) target), beta = 0.1, tau = 30 as
  ARD's (IAD-I.py's own --temp default is 1.0; the paper's value is not in the script,
  and the presets use 30).
- RSLAD (Zi et al. 2021, rslad_loss.py and the training scripts): T(x) in eval mode; PGD on
  KL(T(x) || S(x')) summed, student in eval mode, from x + 0.001 N(0, 1) (not clipped
  before the first step; the script's evaluation PGD, ``attack_pgd``, does clip its
  uniform start); then in training mode 5/6 * KL(T(x) || S(x')) + 1/6 * KL(T(x) || S(x))
  with the element-wise b * (log(b + 1e-5) - a), averaged over batch x classes ("mean").

Every reference uses SGD with momentum 0.9 and coupled weight decay
(``torch.optim.SGD(weight_decay=...)``) on all student parameters.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64

# RSLAD's reference KL adds this inside the log of the target.
RSLAD_LOG_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One method's reference settings; `dataclasses.replace` makes the deliberately wrong
    variants of the calibration tests.

    ``reduction``: of the outer loss (CE for natural/SAT, the KL terms otherwise), as
    ``torch.nn.functional.kl_div`` / ``cross_entropy`` name them. ``attack_bn`` /
    ``update_bn``: "eval" or "train", the student's BatchNorm mode in the attack and in the
    outer loss. ``attack``: False skips the inner maximisation (x' = x). ``start``: the
    reference's random start (the parity runs pass the start itself, see ``start_noise``).
    ``start_noise``: the attack starts from x + the step's given noise instead of x.
    ``clip_start``: that start is clipped to the eps ball and [0, 1] before the first
    gradient (Madry's code); else it is clipped only after the first step.
    ``extra_clean_forward``: TRADES' second training-mode S(x) for the KL target.
    ``introspection``: IAD's self-distillation term (False: its warm-up, plain ARD).
    """

    method: str
    reduction: str
    start: str = "none"  # the reference's attack start: "none", "uniform" or "normal"
    attack_bn: str = "eval"
    update_bn: str = "train"
    attack: bool = True
    start_noise: bool = False
    clip_start: bool = False
    temperature: float = 1.0
    alpha: float = 1.0
    beta: float = 0.0
    adv_weight: float = 5.0 / 6.0
    nat_weight: float = 1.0 / 6.0
    extra_clean_forward: bool = False
    introspection: bool = True


# 0.001 N(0, 1): the TRADES and RSLAD attack start (x + NORMAL_START_STD * noise).
NORMAL_START_STD = 0.001

REFERENCE = {
    "natural": Recipe("natural", reduction="mean"),
    "sat": Recipe("sat", reduction="mean", start="uniform", attack_bn="eval", clip_start=True),
    "trades": Recipe("trades", reduction="batchmean", start="normal", attack_bn="eval",
                     beta=6.0, extra_clean_forward=True),
    "ard": Recipe("ard", reduction="mean", start="uniform", attack_bn="train",
                  temperature=30.0, alpha=1.0),
    "iad": Recipe("iad", reduction="batchmean", start="uniform", attack_bn="train",
                  temperature=30.0, alpha=1.0, beta=0.1),
    "rslad": Recipe("rslad", reduction="mean", start="normal", attack_bn="eval"),
}


@dataclasses.dataclass(frozen=True)
class Hyper:
    """Training hyperparameters shared by both implementations (not method behaviour)."""

    epsilon: float
    step_size: float
    attack_steps: int
    learning_rate: float
    momentum: float
    weight_decay: float


class SmallCNN(nn.Module):
    """The digits CNN: conv-BN-ReLU with widths (w, w, 2w, 2w), a 2x2 max-pool after the
    second block, global average pooling, a linear classifier. NCHW, float64.

    float64 so that the reference's own rounding is negligible: the parity errors measured
    are then those of the float32 Keras step alone, and the sign of a near-zero input
    gradient is the exact one. BatchNorm: PyTorch's own (momentum 0.1, eps 1e-5, running
    variance from the unbiased batch variance, n / (n - 1) times the biased one that Keras
    tracks: a framework convention, measured in docs/parity.md).
    """

    def __init__(self, width: int, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        widths = (width, width, 2 * width, 2 * width)
        ins = (in_channels,) + widths[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1, bias=False)
                                   for i, o in zip(ins, widths))
        self.bns = nn.ModuleList(nn.BatchNorm2d(o, eps=1e-5, momentum=0.1) for o in widths)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.to(DTYPE)

    def forward(self, x):
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if index == 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


def pgd(model, x, objective, *, hyper: Hyper, bn: str, start=None):
    """L-inf PGD as the references write it: from `start` (x if None), `attack_steps`
    times x' <- clamp_[0,1](project_eps(x' + step * sign(grad objective(model(x'))))), with
    the model's BatchNorm in mode `bn` (in "train" its running statistics move each step)."""
    model.train(bn == "train")
    x_adv = (x if start is None else start).detach().clone()
    for _ in range(hyper.attack_steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(model(x_adv)), [x_adv])
        x_adv = x_adv.detach() + hyper.step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - hyper.epsilon), x + hyper.epsilon).clamp(0, 1)
    return x_adv.detach()


def _attack(recipe, model, x, objective, hyper, noise):
    if not recipe.attack:
        return x
    start = None
    if recipe.start_noise:
        start = x + noise
        if recipe.clip_start:
            start = torch.min(torch.max(start, x - hyper.epsilon), x + hyper.epsilon).clamp(0, 1)
    return pgd(model, x, objective, hyper=hyper, bn=recipe.attack_bn, start=start)


def _ce_sum(y):
    return lambda logits: F.cross_entropy(logits, y, reduction="sum")


def _kl_sum(target_probs):
    return lambda logits: F.kl_div(F.log_softmax(logits, 1), target_probs, reduction="sum")


def _reduce(elementwise, reduction):
    """Reduce a [B, K] element-wise loss as ``torch.nn.functional.kl_div`` does."""
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "batchmean":
        return elementwise.sum() / elementwise.shape[0]
    if reduction == "sum":
        return elementwise.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


def _natural(r, s, t, x, y, hyper, noise):
    s.train(r.update_bn == "train")
    return F.cross_entropy(s(x), y, reduction=r.reduction)


def _sat(r, s, t, x, y, hyper, noise):
    x_adv = _attack(r, s, x, _ce_sum(y), hyper, noise)
    s.train(r.update_bn == "train")
    return F.cross_entropy(s(x_adv), y, reduction=r.reduction)


def _trades(r, s, t, x, y, hyper, noise):
    s.train(r.attack_bn == "train")
    with torch.no_grad():
        clean_probs = F.softmax(s(x), 1)  # the same in every attack step (eval mode)
    x_adv = _attack(r, s, x, _kl_sum(clean_probs), hyper, noise)
    s.train(r.update_bn == "train")
    logits_nat = s(x)
    ce = F.cross_entropy(logits_nat, y)
    logits_adv = s(x_adv)
    target = s(x) if r.extra_clean_forward else logits_nat
    kl = _reduce(F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(target, 1),
                          reduction="none"), r.reduction)
    return ce + r.beta * kl


def _ard(r, s, t, x, y, hyper, noise):
    x_adv = _attack(r, s, x, _ce_sum(y), hyper, noise)
    s.train(r.update_bn == "train")
    logits_adv = s(x_adv)
    with torch.no_grad():
        teacher_nat = t(x)
    logits_nat = s(x)
    tau = r.temperature
    kl = _reduce(F.kl_div(F.log_softmax(logits_adv / tau, 1), F.softmax(teacher_nat / tau, 1),
                          reduction="none"), r.reduction)
    loss = r.alpha * tau * tau * kl + (1.0 - r.alpha) * F.cross_entropy(logits_nat, y)
    if r.method == "iad" and r.introspection:
        with torch.no_grad():
            trust = F.softmax(t(x_adv), 1).gather(1, y[:, None])[:, 0] ** r.beta
        self_kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(s(x), 1),
                           reduction="none").sum(1)
        loss = loss + r.alpha * ((1.0 - trust) * self_kl).mean()
    return loss


def _rslad(r, s, t, x, y, hyper, noise):
    with torch.no_grad():
        soft = F.softmax(t(x), 1)
    x_adv = _attack(r, s, x, _kl_sum(soft), hyper, noise)
    s.train(r.update_bn == "train")
    logits_adv = s(x_adv)
    logits_nat = s(x)

    def kl(logits):
        return _reduce(soft * (torch.log(soft + RSLAD_LOG_EPS) - F.log_softmax(logits, 1)),
                       r.reduction)

    return r.adv_weight * kl(logits_adv) + r.nat_weight * kl(logits_nat)


_LOSSES = {"natural": _natural, "sat": _sat, "trades": _trades, "ard": _ard, "iad": _ard,
           "rslad": _rslad}


def train_steps(recipe: Recipe, student: SmallCNN, teacher, x, y, *, hyper: Hyper, noises,
                after_step=None):
    """Reference training steps on one batch, one per entry of `noises` (each the attack's
    start perturbation for a method with ``start_noise``, else None); returns the loss of
    each step. `x` [B, C, H, W] float64, `y` [B] int64. ``after_step()`` is called after
    each optimizer step. The teacher stays frozen in eval mode."""
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    optimizer = torch.optim.SGD(student.parameters(), lr=hyper.learning_rate,
                                momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    losses = []
    for noise in noises:
        optimizer.zero_grad()
        loss = _LOSSES[recipe.method](recipe, student, teacher, x, y, hyper, noise)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step()
    return losses
