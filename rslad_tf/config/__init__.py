"""What defines an experiment: the training configuration, the presets for every row of
the paper and the digits scale (`presets`), and command-line / pipeline overrides
(`overrides`)."""
