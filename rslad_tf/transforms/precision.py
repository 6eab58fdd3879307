"""Float32 copies of mixed-precision models: attacks on float16 / bfloat16 models
under-estimate robustness (docs/paper.md section 6), so every attack runs on float32."""

from __future__ import annotations

from rslad_tf.common.errors import UserError
from rslad_tf.common.model_walk import all_layers


def _replace_dtype_policies(obj):
    """A copy of a Keras config with every layer's dtype policy set to float32."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "dtype" and (isinstance(value, dict) and value.get("class_name") in
                                   ("DTypePolicy", "FloatDTypePolicy", "DTypePolicyMap")
                                   or isinstance(value, str) and value.startswith("mixed")):
                out[key] = "float32"
            else:
                out[key] = _replace_dtype_policies(value)
        return out
    if isinstance(obj, list):
        return [_replace_dtype_policies(v) for v in obj]
    return obj


def ensure_float32(model):
    """``model`` itself if every layer computes in float32, else a float32 copy with the
    same weights (attacks under float16/bfloat16 under-estimate robustness, docs/paper.md
    section 6)."""
    if all(str(getattr(layer, "compute_dtype", "float32")) == "float32"
           for layer in all_layers(model)):
        return model
    config = _replace_dtype_policies(model.get_config())
    try:
        copy = model.__class__.from_config(config)
        copy.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the model computes in {model.compute_dtype} and could not be "
                        f"rebuilt in float32 for evaluation ({exc}); save it with a float32 "
                        "dtype policy") from None
    return copy
