"""Foundation shared by every layer: one-line user errors (`errors`), atomic file writes and
checksums (`fileio`), TensorFlow's start-up noise filter (`quiet`), thread and device
settings (`runtime`), the walk over a model's layers (`model_walk`) and the toolkit's
vocabulary (`vocabulary`). Imports nothing else of the package."""
