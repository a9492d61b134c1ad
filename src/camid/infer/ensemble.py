"""The checkpoints of one (run, fold), applied with TTA and reduced by geometric mean."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..models.classifier import CamidNet, rebuild
from ..train.runtime import autocast
from ..train.trainer import load_checkpoint
from .tta import make_views, predict_views, reduce_probs


class Ensemble:
    """The top-N checkpoints of one (run, fold), applied with TTA and reduced by geometric mean."""

    def __init__(self, files: Sequence[Path], device: torch.device, tta: str, reduce: str, amp: bool = True):
        self.files, self.device, self.tta, self.reduce, self.amp = list(files), device, tta, reduce, amp
        self.nets, self.input_size, self.classes = [], None, None
        for f in self.files:
            ck = load_checkpoint(f)
            net = rebuild(ck["model_args"])
            net.load_state_dict(ck["state_dict"])
            self.nets.append(net.to(device).eval())
            self.input_size, self.classes = ck["input_size"], ck["classes"]

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

    def _one(self, net: CamidNet, x: torch.Tensor, m: torch.Tensor, views) -> torch.Tensor:
        mv = m.repeat(len(views))

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp):
                return net(net.normalize(batch), mv)

        return predict_views(forward, x, views, self.reduce).float()
