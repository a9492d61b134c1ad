"""The camera-model classifier (docs/recipe.md §3): backbone feature map -> global
average pooling -> dropout -> concatenate the ``manip`` flag -> linear layer to the classes.

Global pooling (instead of the fixed 7x7 pool inside pretrainedmodels' ``logits()``) is
what lets one network train on 480/512 crops and still run on any input of at least 32 px.
Checkpoints store ``model.model_args`` (nanoGPT style); ``rebuild(model_args)`` recreates
the architecture so that the checkpoint's state dict loads into it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import BackboneSpec, get_spec, load_pretrained


class CamidNet(nn.Module):
    """Backbone -> global average pool -> dropout -> [features, manip] -> linear.

    Dropout acts on the pooled features only: on the concatenated vector it would zero the
    manip flag in ``dropout`` of the training samples and scale it by ``1/(1-dropout)`` in
    the others, so the head would learn a flag it cannot trust."""

    # Buffers registered in __init__ (declared here for their type).
    _scale: torch.Tensor
    _offset: torch.Tensor
    _mean: torch.Tensor
    _std: torch.Tensor

    def __init__(self, spec: BackboneSpec, num_classes: int, dropout: float = 0.3):
        super().__init__()
        self.backbone_name = spec.name
        self.num_classes = num_classes
        self.model_args = {"backbone": spec.name, "num_classes": num_classes, "dropout": dropout}
        self.input_mean = spec.input_mean
        self.input_std = spec.input_std
        self.input_range = spec.input_range
        self.input_space = spec.input_space
        self._features_fn = spec.features
        self.backbone, self.num_features = spec.build()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features + 1, num_classes)  # +1: the manip flag
        # Non-persistent: derived from the spec, so state dicts stay backbone + head only
        # while .to(device) still moves them.
        lo, hi = spec.input_range
        self.register_buffer("_scale", torch.tensor((hi - lo) / 255.0), persistent=False)
        self.register_buffer("_offset", torch.tensor(float(lo)), persistent=False)
        self.register_buffer("_mean", torch.tensor(spec.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(spec.input_std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW RGB, uint8 or float in [0, 255] -> the backbone's own range/mean/std, float32."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"normalize expects NCHW with 3 channels, got shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        if self.input_space == "BGR":
            x = x.flip(1)
        return (x * self._scale + self._offset - self._mean) / self._std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map (N, F, h, w) of an already-normalised batch."""
        return self._features_fn(self.backbone, x)

    def forward(self, x: torch.Tensor, manip: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for a normalised batch and its (N,) 0/1 manipulation flags."""
        feats = self.features(x)
        # Global average pooling works at any input size; tokens (N, L, F) from
        # transformer backbones are averaged the same way.
        pooled = feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.mean(dim=1)
        flag = manip.reshape(-1, 1).to(pooled.dtype)
        if flag.shape[0] != pooled.shape[0]:
            raise ValueError(f"manip has {flag.shape[0]} flags for a batch of {pooled.shape[0]}")
        return self.head(torch.cat([self.dropout(pooled), flag], dim=1))


def build_model(
    backbone: str,
    num_classes: int,
    dropout: float = 0.3,
    weights_dir: str | Path | None = "weights",
    pretrained: bool = True,
) -> CamidNet:
    """Build a classifier by backbone name; ImageNet weights come from weights_dir if present."""
    if int(num_classes) < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    spec = get_spec(backbone)
    model = CamidNet(spec, int(num_classes), float(dropout))
    if pretrained:
        load_pretrained(model.backbone, spec, weights_dir)
    return model


def rebuild(model_args: dict) -> CamidNet:
    """Recreate a model from checkpoint `model_args` (random init; load the state dict next)."""
    known = {"backbone", "num_classes", "dropout"}
    unknown = set(model_args) - known
    if unknown or "backbone" not in model_args or "num_classes" not in model_args:
        raise CheckpointError(f"bad model_args {model_args!r}: need backbone, num_classes[, dropout]")
    return build_model(**model_args, weights_dir=None, pretrained=False)
