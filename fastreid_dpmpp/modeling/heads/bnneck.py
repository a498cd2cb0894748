"""BN-neck and bias-free classifier (TransReID / CLIP-ReID convention, SPEC §5)."""
from torch import nn


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d with a frozen zero bias: f = BN(v)."""

    def __init__(self, dim):
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


def linear_classifier(in_dim, num_classes):
    """Bias-free linear classifier initialised N(0, 0.001)."""
    layer = nn.Linear(in_dim, num_classes, bias=False)
    nn.init.normal_(layer.weight, std=0.001)
    return layer
