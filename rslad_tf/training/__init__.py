"""Training a student or teacher from a configuration: the epoch loop, the run directory
(config, history, resumable state) and the fast-path setup."""
