"""Attacks: functions ``attack(model, x, y, *, eps, ...) -> x_adv`` on images in [0,1].

All white-box attacks are settings of one PGD engine (``pgd``); ``PROTOCOL`` holds the
paper's evaluation settings (docs/paper.md section 3) so evaluation cannot drift from them.
"""

from __future__ import annotations

import dataclasses

from rslad_tf.attacks.engine import cw_inf, fgsm, pgd, pgd_graph  # noqa: F401

# PGD_TRADES' step 0.003 at eps 8/255, as a fraction of eps (other eps scale with it).
_TRADES_STEP_FRACTION = 0.003 / (8.0 / 255.0)


@dataclasses.dataclass(frozen=True)
class AttackSettings:
    """One white-box column of the paper's table. Step size is a fraction of eps so the
    settings carry over to datasets with another eps (2/255 and 0.003 at eps 8/255)."""

    loss: str
    start: str
    steps: int
    step_fraction: float
    kappa: float = 50.0

    def step_size(self, eps: float) -> float:
        return float(self.step_fraction * eps)

    def run(self, model, x, y, *, eps: float, seed=None):
        return pgd(model, x, y, eps=eps, steps=self.steps, step_size=self.step_size(eps),
                   loss=self.loss, start=self.start, seed=seed, kappa=self.kappa)

    def describe(self, eps: float) -> dict:
        d = dataclasses.asdict(self)
        d["step_size"] = self.step_size(eps)
        d["eps"] = float(eps)
        if self.loss != "cw":
            d.pop("kappa")
        return d


PROTOCOL = {
    "fgsm": AttackSettings(loss="ce", start="none", steps=1, step_fraction=1.0),
    "pgd_sat": AttackSettings(loss="ce", start="uniform", steps=20, step_fraction=0.25),
    "pgd_trades": AttackSettings(loss="ce", start="uniform", steps=20,
                                 step_fraction=_TRADES_STEP_FRACTION),
    "cw_inf": AttackSettings(loss="cw", start="uniform", steps=20, step_fraction=0.25),
}
