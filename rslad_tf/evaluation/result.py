"""The eval JSON as a typed record: what `rslad_tf.evaluation.suite.evaluate` measured.

On disk an eval JSON is one flat object: the run's description (dataset, model, method,
checkpoint, eps, ...), one ``<column>_acc`` key per evaluated column (percent, see
`rslad_tf.common.vocabulary.EVAL_COLUMNS`), the settings of each attack (``attacks``), the
seconds each took, the gradient-masking checks (``sanity``), the keys the callers add (a
training run's preset and seed, an exported artifact's format and size, a pipeline step's
checksums) and, since version 1, ``schema_version``. Files written before that key existed
have the same layout and are read as version 1.
"""

from __future__ import annotations

import dataclasses

from rslad_tf.common import vocabulary

SCHEMA_VERSION = 1
# What even a hand-made eval JSON must say (the report groups rows by them).
REQUIRED = ("dataset", "model")
# Keys written only when they hold something.
_OPTIONAL = ("model_sha256", "autoattack_per_attack", "surrogate", "sanity")


@dataclasses.dataclass
class EvalResult:
    """One evaluation. ``accuracy`` maps column keys (``"pgd_sat"``) to percent, in the
    order they ran; ``extra`` holds the keys this record does not define, as they are."""

    dataset: str
    model: str
    method: str | None = None
    checkpoint: str | None = None
    checkpoint_path: str | None = None
    model_sha256: str | None = None
    eps: float | None = None
    n_examples: int | None = None
    params: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    autoattack_impl: str | None = None
    accuracy: dict = dataclasses.field(default_factory=dict)
    attacks: dict = dataclasses.field(default_factory=dict)
    seconds: dict = dataclasses.field(default_factory=dict)
    autoattack_per_attack: dict | None = None
    surrogate: str | None = None
    sanity: dict | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        """The eval JSON object (plain dict, JSON-serialisable as is)."""
        out = {}
        for field in dataclasses.fields(self):
            if field.name in ("accuracy", "extra"):
                continue
            value = getattr(self, field.name)
            if value is None and field.name in _OPTIONAL:
                continue
            out[field.name] = value
        for key, acc in self.accuracy.items():
            out[vocabulary.COLUMNS_BY_KEY[key].json_key] = acc
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "EvalResult":
        """The record of an eval JSON object; ValueError saying why it is not one (a
        missing required key, no accuracy, or a schema newer than this code reads)."""
        if not isinstance(data, dict):
            raise ValueError("does not hold an eval JSON object")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ValueError(f"is not an eval JSON (missing {', '.join(missing)})")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(f"has eval schema version {version!r}; this rslad_tf reads "
                             f"versions up to {SCHEMA_VERSION}: update rslad_tf")
        accuracy = {c.key: data[c.json_key] for c in vocabulary.EVAL_COLUMNS
                    if c.json_key in data}
        if not accuracy:
            raise ValueError("holds no accuracy (no *_acc key)")
        names = {f.name for f in dataclasses.fields(cls)} - {"accuracy", "extra"}
        json_keys = {c.json_key for c in vocabulary.EVAL_COLUMNS}
        fields = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in json_keys}
        return cls(**fields, accuracy=accuracy, extra=extra)
