"""Where and how a network runs: device choice, autocast, batched forward passes, seeding, DDP facts."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..models.classifier import CamidNet


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


@dataclass(frozen=True)
class Dist:
    """Process-group facts; world 1 outside ``torchrun``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (one big model over several GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), world, local)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def forward_batches(model: CamidNet, images: torch.Tensor, manip: torch.Tensor, device: torch.device,
                    batch_size: int, amp: bool, channels_last: bool = False) -> torch.Tensor:
    """Logits for a uint8 image tensor, in batches, on ``device`` (float32 result on CPU)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = model.normalize(images[i:i + batch_size].to(device, non_blocking=True))
            if channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                out.append(model(x, manip[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out)
