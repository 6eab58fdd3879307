"""The numbers of the RSLAD paper (Zi et al., ICCV 2021), best checkpoints, in percent.

Transcribed from docs/paper.md section 5 (Tables 2-4 of the paper). Used by the report's model
card to put our measured numbers next to the published ones; never used as results.
Keys: (dataset, model, method) -> {report column label: accuracy}. `SUCCESSORS` holds the
published numbers of the methods added since (AdaAD, IGDM), each with its own source.
"""

from rslad_tf.common import vocabulary

# The labels of the white-box suite's columns, in the paper's order.
_WHITE = tuple(vocabulary.COLUMNS_BY_KEY[k].label for k in vocabulary.WHITE_BOX_SUITE)


def _row(*values):
    return dict(zip(_WHITE, values))


PAPER = {
    ("cifar10", "resnet18", "sat"): _row(83.38, 56.41, 49.11, 51.11, 48.67, 45.83),
    ("cifar10", "resnet18", "trades"): _row(81.93, 57.49, 52.66, 53.68, 50.58, 49.23),
    ("cifar10", "resnet18", "ard"): _row(83.93, 59.31, 52.05, 54.20, 51.22, 49.19),
    ("cifar10", "resnet18", "iad"): _row(83.24, 58.60, 52.21, 54.18, 51.25, 49.10),
    ("cifar10", "resnet18", "rslad"): {
        **_row(83.38, 60.01, 54.24, 55.94, 53.30, 51.49),
        "PGD-20 transfer": 64.11, "CW_inf transfer": 63.84, "Square": 57.90},
    ("cifar10", "mobilenetv2", "sat"): _row(82.48, 56.44, 50.10, 51.74, 49.33, 46.32),
    ("cifar10", "mobilenetv2", "rslad"): {
        **_row(83.40, 59.06, 53.16, 54.78, 51.91, 50.17),
        "PGD-20 transfer": 63.30, "CW_inf transfer": 63.20, "Square": 56.70},
    ("cifar100", "resnet18", "rslad"): _row(57.74, 34.20, 31.08, 31.90, 28.34, 26.70),
    ("cifar100", "mobilenetv2", "rslad"): _row(58.97, 34.03, 30.40, 31.36, 28.22, 26.12),
    ("cifar100", "resnet18", "sat"): {"AA": 21.79},
    ("cifar100", "resnet18", "ard"): {"AA": 25.65},
    ("cifar100", "resnet18", "iad"): {"AA": 25.12},
}
SOURCE = "paper (Zi et al. 2021)"

# Published AutoAttack accuracies (percent) of the methods added beyond the RSLAD paper, each
# with its source. Only numbers read in the papers' own abstracts are listed; the settings
# behind them (teacher, epochs, eps schedule) are in docs/methods.md where known. Keys:
# (dataset, model, method as docs/methods.md names it) -> {"AA": accuracy, "source": text}.
SUCCESSORS = {
    ("cifar10", "resnet18", "adaad"): {
        "AA": 54.23,
        "source": "Huang et al., CVPR 2023, abstract: the AdaAD ResNet-18's RobustBench "
                  "AutoAttack accuracy (the abstract does not name the teacher)"},
    ("cifar100", "resnet18", "best base method"): {
        "AA": 28.06, "source": "Lee et al., arXiv 2312.03286 v2, abstract: the strongest "
                               "distillation method they compare, without IGDM"},
    ("cifar100", "resnet18", "best base method + igdm"): {
        "AA": 30.32, "source": "Lee et al., arXiv 2312.03286 v2, abstract: the same with IGDM"},
    ("cifar100", "mobilenetv2", "best base method"): {
        "AA": 26.18, "source": "Lee et al., arXiv 2312.03286 v2, abstract"},
    ("cifar100", "mobilenetv2", "best base method + igdm"): {
        "AA": 29.32, "source": "Lee et al., arXiv 2312.03286 v2, abstract (v1 said 29.52)"},
}
