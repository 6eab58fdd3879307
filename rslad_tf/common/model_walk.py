"""Every layer of a Keras model, nested models included: the one walk the precision
checks (`transforms.precision`, `methods.base.student_precision`) and the oneDNN checks
(`common.onednn`) share. Reads attributes only, so it imports no framework."""

from __future__ import annotations


def all_layers(model) -> list:
    """``model`` and every layer below it, through any nesting of models and layers that
    hold ``layers``."""
    stack, seen = [model], []
    while stack:
        layer = stack.pop()
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []) or [])
    return seen
