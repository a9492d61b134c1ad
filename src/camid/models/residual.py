"""From-scratch backbones for CPUs: the first layer only sees image residuals (``camid_tiny``, ``camid_small``)."""
from __future__ import annotations

import torch
from torch import nn


class ResidualConv2d(nn.Conv2d):
    """Convolution whose every kernel sums to zero, so it only ever sees image residuals.

    Camera-model traces (demosaicing correlations, sensor noise, JPEG block edges) live in
    high frequencies that scene content swamps. Bayar & Stamm (2016) constrain the first
    layer to prediction-error filters by projecting the weights after each optimiser step;
    subtracting each kernel's mean inside forward() gives the same "no DC response"
    guarantee as a smooth reparameterisation, without touching the training loop.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(2, 3), keepdim=True)
        return self._conv_forward(x, weight, self.bias)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResidualCNN(nn.Module):
    """Residual-input CNN: constrained 5x5 conv at full resolution, then strided conv blocks.

    No pooling and no stride before the residual layer, so the 2x2 colour-filter period
    and single-pixel noise survive into the learned filters.
    """

    def __init__(self, stem: int, widths: tuple[int, ...], blocks_per_stage: int = 1):
        super().__init__()
        layers: list[nn.Module] = [ResidualConv2d(3, stem, 5, padding=2, bias=False), nn.BatchNorm2d(stem)]
        cin = stem
        for width in widths:
            layers.append(_conv_bn_relu(cin, width, stride=2))
            layers += [_conv_bn_relu(width, width, stride=1) for _ in range(blocks_per_stage - 1)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
