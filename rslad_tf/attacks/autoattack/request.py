"""What an AutoAttack request may ask for, checked the same way for both implementations
(`rslad_tf.attacks.autoattack` native, `rslad_tf.attacks.autoattack.reference`).

Plain Python: the reference parent side reads it without TensorFlow.
"""

from __future__ import annotations

# The standard version's attacks, in the order they run.
ATTACK_ORDER_STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")
VERSIONS = ("standard", "custom")
# Overrides of the hyper-parameters: only for fast tests and smoke runs. Any override is
# recorded in the results, so a non-standard run cannot pass for a standard one.
OPTION_KEYS = ("n_iter", "n_restarts", "n_queries", "n_target_classes")


def check_request(version: str, attacks, options, known_attacks) -> None:
    """ValueError unless ``version`` is known, ``attacks`` (names in ``known_attacks``) are
    given exactly for a "custom" run, and ``options`` has only ``OPTION_KEYS``."""
    if version not in VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {VERSIONS}")
    if version == "custom":
        if not attacks:
            raise ValueError("a 'custom' AutoAttack run needs a list of attacks")
        unknown = [a for a in attacks if a not in known_attacks]
        if unknown:
            raise ValueError(f"unknown AutoAttack attack(s) {unknown}; choose from "
                             f"{known_attacks}")
    elif attacks:
        raise ValueError("attacks can only be chosen with version='custom'")
    unknown = sorted(set(options or {}) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown AutoAttack option(s) {unknown}; choose from {OPTION_KEYS}")
