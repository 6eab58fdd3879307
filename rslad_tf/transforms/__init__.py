"""Model transforms that keep a model's function: BatchNorm folding for the attack's
inference-mode passes (`bn_folding`) and float32 copies of mixed-precision models
(`precision`)."""
