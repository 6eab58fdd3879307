"""Kubeflow pipeline definitions of rslad_tf: `pipelines.rslad_pipeline` (compile, run
locally, submit). See pipelines/README.md."""
