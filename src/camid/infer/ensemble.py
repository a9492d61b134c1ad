"""``Ensemble``: the checkpoints of one (run, fold), loaded once and applied together.

Every stage that applies trained networks (predict, identify, robustness) goes through
it: one loading loop, one class list and input size, probabilities reduced over the
checkpoints by geometric mean.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..models.classifier import CamidNet, rebuild
from ..train.rundir import load_checkpoint
from ..train.runtime import autocast, forward_batches
from .tta import View, make_views, predict_views, reduce_probs


class Ensemble:
    """The top-N checkpoints of one (run, fold), applied with TTA and reduced by geometric mean."""

    def __init__(self, files: Sequence[Path], device: torch.device, tta: str, reduce: str, amp: bool = True):
        if not files:
            raise CheckpointError("an ensemble needs at least one checkpoint")
        self.files, self.device, self.tta, self.reduce, self.amp = list(files), device, tta, reduce, amp
        self.nets: list[CamidNet] = []
        for f in self.files:
            ck = load_checkpoint(f)
            net = rebuild(ck.model_args)
            net.load_state_dict(ck.state_dict)
            self.nets.append(net.to(device).eval())
            self.input_size: int = ck.input_size
            self.classes: list[str] = ck.classes
            self.train_config: dict[str, Any] = ck.config  # the resolved config the run was trained with

    def predict(self, images: torch.Tensor, manip: torch.Tensor, batch_size: int) -> np.ndarray:
        """(N, 3, H, W) uint8 -> (N, classes) probabilities."""
        views = make_views(self.tta, images.shape[-2], images.shape[-1], self.input_size)
        per_view_batch = max(1, batch_size // len(views))  # batch_size counts network inputs
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), per_view_batch):
                x = images[i:i + per_view_batch].to(self.device)
                m = manip[i:i + per_view_batch].to(self.device)
                probs = torch.stack([self._one(net, x, m, views) for net in self.nets])
                out.append(reduce_probs(probs, "gmean", dim=0).cpu())
        return torch.cat(out).double().numpy()

    def predict_whole(self, images: torch.Tensor, manip: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N, classes): each checkpoint on the whole image without TTA, exactly as validation
        scores it (``train.trainer.evaluate``), then the geometric mean over checkpoints."""
        probs = torch.stack([torch.softmax(forward_batches(net, images, manip, self.device, batch_size, self.amp),
                                           dim=1) for net in self.nets])
        return reduce_probs(probs, "gmean", dim=0)

    def _one(self, net: CamidNet, x: torch.Tensor, m: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
        mv = m.repeat(len(views))

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp):
                return net(net.normalize(batch), mv)

        return predict_views(forward, x, views, self.reduce).float()
