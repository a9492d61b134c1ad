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
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import ImageReadError
from ..util.log import progress
from . import fastjpeg, manipulations
from .crops import BLOCK, GRID, MCU, centre_offset, manipulated_centre_crop, phased_random_crop, random_crop
from .images import read_image
from .jpeg_grid import ZERO, Phase, PhaseSet
from .orientation import ORIENTATION_POLICIES, sensor_frame


@dataclass(frozen=True)
class SampleSpec:
    input_size: int
    crop_factor: int = 2
    manip_prob: float = 0.5
    manip_mode: str = "competition"
    orientation: str = "d4"
    # JPEG block phases of the final crop of a photo, drawn per sample (``train.jpeg_phase``)...
    phases: PhaseSet = ZERO
    # ...and of a test crop's (pseudo-labels): its offset mod 8 within the crop, as the first view's
    crop_phase: Phase = (0, 0)


def _allowed(pre: int, input_size: int) -> tuple[str, ...]:
    """Competition manipulations that leave a ``pre``-px crop at least ``input_size`` wide."""
    return tuple(n for n in manipulations.MANIPULATION_NAMES if int(pre * manipulations.get(n).scale) >= input_size)


def training_sample(img: np.ndarray | fastjpeg.LazyCrop, rng: np.random.Generator,
                    spec: SampleSpec, fixed_manip: bool = False, test_crop: bool = False) -> tuple[torch.Tensor, int]:
    """One augmented crop (uint8 CHW tensor) and its manip flag.

    The first crop sits on the 16-px JPEG MCU grid of the photo and the final one at a phase of
    its 8-px block grid drawn from ``spec.phases`` (unless a resize moved the grid), because the
    test crops are centre crops of the photo (or of its recompression) and so keep the photo's
    grid at the phase of their offset: the network sees the camera's and the manipulation's
    JPEG blocks where it will be tested. Even phases keep the 2x2 colour-filter period; an odd
    test phase is matched too, since the test crop's filter grid moved with it. A ``test_crop``
    (pseudo-labelled) already has the test phase: its final crop keeps ``spec.crop_phase``
    within it. A photo smaller than the first crop is taken whole, and then only
    manipulations that leave at least the input size are drawn (pseudo-labelled test crops,
    small external photos). ``fixed_manip``: an already manipulated test crop, flagged 1 and
    never manipulated again.

    ``img`` may be a ``fastjpeg.LazyCrop``: the crops below then stay undecoded until
    numpy needs pixels, so only the 2x crop (manipulated samples) or only the final
    crop (the others) is decoded. Same draws, same pixels as with the decoded array.
    """
    h, w = img.shape[:2]
    pre = min(spec.input_size * spec.crop_factor, max(spec.input_size, min(h, w) // GRID * GRID))
    big = random_crop(img, pre, rng, align=MCU)
    align = BLOCK
    flag = 1 if fixed_manip else int(rng.random() < spec.manip_prob)
    if flag and not fixed_manip:
        big = np.ascontiguousarray(big)
        if spec.manip_mode == "continuous":
            from . import augment  # albumentations takes seconds to import: only this policy needs it

            before = big.shape
            big = augment.continuous(big, rng)
            align = BLOCK if big.shape == before else GRID
        elif spec.manip_mode == "competition":
            allowed = manipulations.MANIPULATION_NAMES if pre == spec.input_size * spec.crop_factor \
                else _allowed(pre, spec.input_size)
            name = allowed[int(rng.integers(len(allowed)))]
            big = manipulations.apply(big, name)
            align = GRID if manipulations.get(name).moves_grid else BLOCK
        else:
            raise ValueError(f"unknown manipulation mode {spec.manip_mode!r}")
    if align == BLOCK:
        phase = spec.crop_phase if test_crop else spec.phases.draw(rng)
        small = phased_random_crop(big, spec.input_size, rng, phase)
    else:
        small = random_crop(big, spec.input_size, rng, align=align)
    policy = ORIENTATION_POLICIES[spec.orientation]
    orient = policy[int(rng.integers(len(policy)))]
    x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)
    return orient.augment(x).contiguous(), flag


class TrainSamples(torch.utils.data.Dataset):
    """Balanced-class random samples; ``len`` is the number of samples per epoch.

    Classes are drawn in turn whatever their image counts (the recipe's balanced sampling),
    then an image of the class uniformly. ``fixed_manip`` marks images that are already
    manipulated (pseudo-labelled ``_manip`` test crops): flag 1, no further manipulation.
    ``test_crops`` marks pseudo-labelled test crops, which keep their own JPEG grid phase."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], n_classes: int,
                 length: int, spec: SampleSpec, seed: int, fixed_manip: Sequence[bool] | None = None,
                 portrait: str = "keep", test_crops: Sequence[bool] | None = None,
                 decode_cache: fastjpeg.DecodeCache | None | str = "default"):
        self.paths = list(paths)
        self.decode_cache = decode_cache  # as fastjpeg.open_image's ``cache``; travels to the DataLoader workers
        self.portrait = portrait  # "rotate": portrait photos are sampled in the sensor frame
        self.turned = 0  # preloaded photos turned to the sensor frame
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fixed_manip = np.zeros(len(self.paths), bool) if fixed_manip is None else np.asarray(fixed_manip, bool)
        if len(self.fixed_manip) != len(self.paths):
            raise ValueError(f"{len(self.fixed_manip)} manip flags for {len(self.paths)} images")
        self.test_crops = np.zeros(len(self.paths), bool) if test_crops is None else np.asarray(test_crops, bool)
        if len(self.test_crops) != len(self.paths):
            raise ValueError(f"{len(self.test_crops)} test-crop flags for {len(self.paths)} images")
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(n_classes)]
        self.present = [c for c in range(n_classes) if len(self.by_class[c])]
        self.length, self.spec, self.seed = length, spec, seed
        self.images: dict[int, np.ndarray] = {}  # preloaded decodes, by index
        self.set_epoch(0)

    def preload(self, desc: str | None = "preload") -> list[tuple[str, str]]:
        """Decode every image once into memory (small data sets: the demo, tests), so sampling
        costs a crop instead of a decode; DataLoader workers forked afterwards share the pages.
        Returns the unreadable files (path, reason); they stay on the lazy path and are skipped."""
        bad = []
        for i, path in enumerate(progress(self.paths, desc) if desc else self.paths):
            try:
                img = read_image(path)
            except ImageReadError as exc:
                bad.append((path, exc.reason))
                continue
            self.images[i] = sensor_frame(img) if self.portrait == "rotate" else img
            self.turned += self.images[i] is not img
        return bad

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
            # Preloaded, else region decoding when the photo allows it (fastjpeg), else a full decode.
            img = self.images[idx] if idx in self.images else fastjpeg.open_image(self.paths[idx], self.decode_cache)
            if self.portrait == "rotate" and img.shape[0] > img.shape[1]:
                img = sensor_frame(np.asarray(img))  # a lazy crop is decoded whole first
            x, flag = training_sample(img, rng, self.spec, bool(self.fixed_manip[idx]), bool(self.test_crops[idx]))
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

    def view(self, rule: str, size: int) -> VariantSet:
        """The variants as the first view of a TTA policy sees them: ``whole`` crops, or their
        ``centre`` ``size`` crop (the same even-offset box as the first TTA view)."""
        if rule == "whole" or size >= min(self.images.shape[-2:]):
            return self
        if rule != "centre":
            raise ValueError(f"unknown validation view {rule!r}")
        h, w = self.images.shape[-2:]
        y, x = centre_offset(h, size), centre_offset(w, size)
        return replace(self, images=self.images[..., y:y + size, x:x + size].contiguous())


def build_variants(paths: Sequence[str], fnames: Sequence[str], labels: Sequence[int],
                   augs: Sequence[str] | Callable[[str], Sequence[str]], crop: int,
                   desc: str | None = "variants", portrait: str = "keep",
                   phases: PhaseSet | None = None) -> VariantSet:
    """Each image x each of its augs (``none`` or a manipulation name), cropped like the test set.

    ``augs`` is one list for every image or a function of the image key; each file is decoded once.
    ``portrait``: ``rotate`` turns portrait photos to the sensor frame first, as training does.
    ``phases``: the test crops' JPEG grid phases; each image's crop is placed near its centre at
    the phase ``phases.for_key(fname)`` (None: at the centre, whatever phase the photo size gives).
    """
    imgs, flags, labs, names, keys, skipped = [], [], [], [], [], []
    items = list(zip(paths, fnames, labels, strict=True))
    for path, fname, label in (progress(items, desc) if desc else items):
        try:
            img = read_image(path)
        except ImageReadError as exc:
            skipped.append((path, exc.reason))
            continue
        if portrait == "rotate":
            img = sensor_frame(img)
        phase = phases.for_key(fname) if phases is not None else None
        for aug in (augs(fname) if callable(augs) else augs):
            out = manipulated_centre_crop(img, aug, crop, phase)
            imgs.append(torch.from_numpy(out).permute(2, 0, 1))
            flags.append(0.0 if aug == "none" else 1.0)
            labs.append(int(label))
            names.append(aug)
            keys.append(fname)
    if not imgs:
        raise ImageReadError(paths[0] if paths else "<none>", "no readable image among the variants")
    return VariantSet(torch.stack(imgs), torch.tensor(flags), torch.tensor(labs, dtype=torch.int64),
                      names, keys, skipped)
