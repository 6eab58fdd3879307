# The one image every pipeline component runs in: Python, TensorFlow, kfp and this package,
# all from the exact pins of requirements.txt. Nothing is installed when a step runs.
#
#   docker build -t REGISTRY/rslad-tf:0.1.0 .
#   docker build --build-arg TF_CUDA=1 -t REGISTRY/rslad-tf:0.1.0-gpu .   # GPU nodes
#   docker push REGISTRY/rslad-tf:0.1.0
#   python -m pipelines.rslad_pipeline compile --image REGISTRY/rslad-tf:0.1.0 --out rslad.yaml
FROM python:3.11-slim

# TF_CUDA=1 adds the CUDA libraries TensorFlow needs on GPU nodes: its own `and-cuda`
# extra at the TensorFlow version pinned in requirements.txt (those libraries are pinned
# by TensorFlow itself). Without it TensorFlow runs on CPU.
ARG TF_CUDA=0
# REFERENCE_AA=1 adds requirements-dev.txt: PyTorch and the reference AutoAttack, needed
# only for `--autoattack reference` and `python -m rslad_tf.verify_autoattack` (the default
# AutoAttack is the native TensorFlow one). PyPI's torch wheel for Linux bundles CUDA
# (several GB); for a CPU-only torch add
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG REFERENCE_AA=0
ARG PIP_EXTRA_INDEX_URL=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/rslad_tf

# Dependencies first, from the pinned file alone: this layer is rebuilt only when the
# pins change, not on every code change.
COPY requirements.txt requirements-dev.txt ./
RUN python -m pip install -r requirements.txt \
 && if [ "$TF_CUDA" = "1" ]; then \
        python -m pip install "tensorflow[and-cuda]==$(sed -n 's/^tensorflow==//p' requirements.txt)"; \
    fi \
 && if [ "$REFERENCE_AA" = "1" ]; then python -m pip install -r requirements-dev.txt; fi

# The library (rslad_tf) is installed without touching the pinned dependencies; the
# pipeline's folders (components, pipelines: generic names, not installed into
# site-packages) are imported from /opt/rslad_tf on PYTHONPATH, in every step. The import
# check, from another directory, fails the build instead of the first pipeline step.
COPY pyproject.toml README.md ./
COPY rslad_tf ./rslad_tf
COPY components ./components
COPY pipelines ./pipelines
ENV PYTHONPATH=/opt/rslad_tf
RUN python -m pip install --no-deps . \
 && cd / && python -c "import rslad_tf, components, pipelines.rslad_pipeline, kfp, tensorflow, \
                              ai_edge_litert.interpreter, onnxruntime, tf2onnx"

# kfp lightweight components start `python3 -m kfp.dsl.executor_main` themselves.
WORKDIR /
CMD ["python", "-m", "pipelines.rslad_pipeline", "--help"]
