"""Training samples and validation variants (docs/recipe.md §2 and §4).

Training sample: random crop of ``crop_factor x input`` at even offsets -> with
probability ``p`` one manipulation (flag 1: one of the 8 competition ones, or the
``continuous`` policy of ``augment``) -> random crop of the input size ->
orientation from the policy. Classes are sampled in balance with a fixed number
of samples per epoch. Every random draw comes from ``(seed, epoch, index)``, so a
run is reproducible whatever the number of DataLoader workers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ImageReadError
from ..util.log import progress
from . import fastjpeg, manipulations
from .crops import manipulated_centre_crop, random_crop
from .images import read_image
from .orientation import ORIENTATION_POLICIES


@dataclass(frozen=True)
class SampleSpec:
    input_size: int
    crop_factor: int = 2
    manip_prob: float = 0.5
    manip_mode: str = "competition"
    orientation: str = "d4"


def training_sample(img: np.ndarray | fastjpeg.LazyCrop, rng: np.random.Generator,
                    spec: SampleSpec) -> tuple[torch.Tensor, int]:
    """One augmented crop (uint8 CHW tensor) and its manip flag.

    ``img`` may be a ``fastjpeg.LazyCrop``: the crops below then stay undecoded until
    numpy needs pixels, so only the 2x crop (manipulated samples) or only the final
    crop (the others) is decoded. Same draws, same pixels as with the decoded array.
    """
    big = random_crop(img, spec.input_size * spec.crop_factor, rng)
    flag = int(rng.random() < spec.manip_prob)
    if flag:
        big = np.ascontiguousarray(big)
        if spec.manip_mode == "continuous":
            from . import augment  # albumentations takes seconds to import: only this policy needs it

            big = augment.continuous(big, rng)
        elif spec.manip_mode == "competition":
            big = manipulations.apply(big, manipulations.sample(rng))
        else:
            raise ValueError(f"unknown manipulation mode {spec.manip_mode!r}")
    small = random_crop(big, spec.input_size, rng)
    policy = ORIENTATION_POLICIES[spec.orientation]
    orient = policy[int(rng.integers(len(policy)))]
    x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)
    return orient.augment(x).contiguous(), flag


class TrainSamples(torch.utils.data.Dataset):
    """Balanced-class random samples; ``len`` is the number of samples per epoch."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], n_classes: int,
                 length: int, spec: SampleSpec, seed: int):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(n_classes)]
        self.present = [c for c in range(n_classes) if len(self.by_class[c])]
        self.length, self.spec, self.seed = length, spec, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 1])
        classes = np.asarray(self.present)[np.arange(self.length) % len(self.present)]
        self.class_order = classes[rng.permutation(self.length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, 2, i])
        members = self.by_class[self.class_order[i]]
        idx = int(members[rng.integers(len(members))])
        try:
            # Region decoding when the photo allows it (fastjpeg), else a full decode.
            img = fastjpeg.open_image(self.paths[idx])
            x, flag = training_sample(img, rng, self.spec)
        except ImageReadError as exc:
            return {"skip": self.paths[idx], "reason": exc.reason}
        return {"image": x, "manip": float(flag), "label": int(self.labels[idx])}


def collate(items: list[dict]) -> dict:
    """Stack usable samples; unreadable files travel along as ``skipped`` for the run report."""
    good = [it for it in items if "image" in it]
    batch: dict = {"skipped": [(it["skip"], it["reason"]) for it in items if "skip" in it]}
    if good:
        batch["image"] = torch.stack([it["image"] for it in good])
        batch["manip"] = torch.tensor([it["manip"] for it in good], dtype=torch.float32)
        batch["label"] = torch.tensor([it["label"] for it in good], dtype=torch.int64)
    return batch


@dataclass
class VariantSet:
    """Deterministic centre crops of held-out images: unaltered and manipulated variants."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    manip: torch.Tensor  # (N,) float
    labels: torch.Tensor  # (N,) int64
    aug: list[str]
    fnames: list[str]
    skipped: list[tuple[str, str]]


def build_variants(paths: Sequence[str], fnames: Sequence[str], labels: Sequence[int],
                   augs: Sequence[str] | Callable[[str], Sequence[str]], crop: int,
                   desc: str | None = "variants") -> VariantSet:
    """Each image x each of its augs (``none`` or a manipulation name), cropped like the test set.

    ``augs`` is one list for every image or a function of the image key; each file is decoded once.
    """
    imgs, flags, labs, names, keys, skipped = [], [], [], [], [], []
    items = list(zip(paths, fnames, labels, strict=True))
    for path, fname, label in (progress(items, desc) if desc else items):
        try:
            img = read_image(path)
        except ImageReadError as exc:
            skipped.append((path, exc.reason))
            continue
        for aug in (augs(fname) if callable(augs) else augs):
            out = manipulated_centre_crop(img, aug, crop)
            imgs.append(torch.from_numpy(out).permute(2, 0, 1))
            flags.append(0.0 if aug == "none" else 1.0)
            labs.append(int(label))
            names.append(aug)
            keys.append(fname)
    if not imgs:
        raise ImageReadError(paths[0] if paths else "<none>", "no readable image among the variants")
    return VariantSet(torch.stack(imgs), torch.tensor(flags), torch.tensor(labs, dtype=torch.int64),
                      names, keys, skipped)
