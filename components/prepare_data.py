"""prepare_data: check that a dataset loads and write its Dataset artifact (a manifest).

The embedded ``digits`` need nothing; CIFAR is read from ``data_dir`` (python archives or a
TFDS directory, see `rslad_tf.data.cifar`), downloaded through TFDS into ``data_dir`` only
when ``download`` is true. On a cluster ``data_dir`` must be storage every step can read
(a mounted volume or a ``gs://`` TFDS directory): later steps read the data from there and
check it against the fingerprints written here.
"""

# No `from __future__ import annotations`: kfp reads the wrapper's annotations as types.
import os

from kfp.dsl import Dataset, Output

from components.common import (DATASET_FORMAT, DATASET_MANIFEST, component,
                               ensure_empty_dir, fingerprint)


def prepare_data_fn(out_dir: str, *, dataset: str = "digits", data_dir: str = "",
                    download: bool = False, log=print) -> dict:
    """Load both splits of ``dataset`` once (failing early with a one-line error when the
    data is missing) and write ``dataset.json`` into ``out_dir``. Returns the manifest."""
    import numpy as np

    from rslad_tf.common import fileio
    from rslad_tf.data import load_numpy, spec

    data_spec = spec(dataset)  # DataError naming the known datasets
    data_dir = data_dir or None
    if data_dir and "://" not in data_dir:
        data_dir = os.path.abspath(data_dir)
    ensure_empty_dir(out_dir, "dataset artifact")
    if download and dataset.startswith("cifar"):
        log(f"preparing {dataset} through TFDS in {data_dir or '~/tensorflow_datasets'}")
    manifest = {"format": DATASET_FORMAT, "dataset": dataset, "data_dir": data_dir,
                "num_classes": data_spec.num_classes,
                "image_shape": list(data_spec.image_shape),
                "epsilon": data_spec.epsilon}
    for split in ("train", "test"):
        x, y = load_numpy(dataset, split, data_dir, download=download)
        if x.shape[1:] != tuple(data_spec.image_shape):
            from rslad_tf.data import DataError

            raise DataError(f"{dataset} {split} images have shape {x.shape[1:]}, expected "
                            f"{tuple(data_spec.image_shape)}")
        manifest[f"n_{split}"] = int(len(x))
        manifest[f"{split}_fingerprint"] = fingerprint(x, y)
        if split == "train":
            counts = np.bincount(y, minlength=data_spec.num_classes)
            manifest["train_class_counts"] = [int(c) for c in counts]
    fileio.write_json(os.path.join(out_dir, DATASET_MANIFEST), manifest)
    log(f"{dataset}: {manifest['n_train']} train / {manifest['n_test']} test images of "
        f"shape {tuple(data_spec.image_shape)}, {data_spec.num_classes} classes, "
        f"eps {data_spec.epsilon:.4g}")
    return manifest


@component
def prepare_data(data: Output[Dataset], dataset: str = "digits", data_dir: str = "",
                 download: bool = False):
    """Check the dataset and write its manifest (a Dataset artifact)."""
    from components.common import configure_runtime, metadata_for_kfp
    from components.prepare_data import prepare_data_fn

    configure_runtime(tensorflow=False)
    manifest = prepare_data_fn(data.path, dataset=dataset, data_dir=data_dir,
                               download=download)
    data.metadata.update(metadata_for_kfp(manifest))
