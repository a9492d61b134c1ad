"""Backbone registry (timm style): every backbone is known by name, with its input
statistics, builder and ImageNet weights files (docs/recipe.md §3).

Families:
  * the recipe's eight ImageNet backbones from `pretrainedmodels` (weights from a local
    folder, see `weights_table()`; building never downloads: `camid weights fetch`,
    `camid.models.weights`, fills the folder from the published URLs);
  * any timm model as `timm/<name>` (weights from `<weights_dir>/timm/<name>.safetensors|.pth`);
  * `camid_tiny` / `camid_small`: small residual-input CNNs trained from scratch, for CPU
    demos and tests.

`camid.models.classifier` puts the recipe's head on a backbone.
"""
from __future__ import annotations

import copy
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .residual import ResidualCNN

TIMM_PREFIX = "timm/"

# A builder returns the backbone with its ImageNet classifier removed and the number of
# channels of its feature map.
Builder = Callable[[], "tuple[nn.Module, int]"]
FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the harness needs to know about one backbone, by name."""

    name: str
    family: str  # "pretrainedmodels" | "timm" | "camid"
    build: Builder
    features: FeatureFn
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    input_range: tuple[float, float] = (0.0, 1.0)
    input_space: str = "RGB"
    # File names accepted under weights_dir (first = canonical, named in warnings);
    # empty for networks that always train from scratch.
    weights_files: tuple[str, ...] = ()
    # Where the library publishes the canonical file (weights_files[0]); `camid weights fetch`.
    weights_url: str = ""
    # Checkpoint keys under these prefixes belong to the ImageNet classifier and are dropped.
    classifier_prefixes: tuple[str, ...] = ()
    # Checkpoint key remapping applied before loading (e.g. old torchvision densenet names).
    remap_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    description: str = ""


# --------------------------------------------------------------------------- features
def _features_attr(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # pretrainedmodels exposes `features` as a method (senet) or as a module attribute
    # (resnext, dpn); calling it works for both.
    return _module_fn(backbone, "features")(x)


def _module_fn(module: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A sub-module or method of a third-party backbone, by name (its type is not declared)."""
    fn: Callable[[torch.Tensor], torch.Tensor] = getattr(module, name)
    return fn


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = values
    return float(a), float(b), float(c)


def _features_densenet(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # torchvision's densenet `features` ends at norm5 (BN without activation); its forward
    # and pretrainedmodels' logits() apply the ReLU afterwards, so we must too.
    return F.relu(_module_fn(backbone, "features")(x))


def _features_call(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # timm models are created with num_classes=0, global_pool='' so forward() returns the
    # unpooled map (with any head norm the model has); camid nets return their map directly.
    return backbone(x)


# ------------------------------------------------------------------- pretrainedmodels
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def remap_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old torchvision densenet checkpoints name layers `norm.1`; modules are now `norm1`.

    Same rule as torchvision's `_load_state_dict` and pretrainedmodels' `update_state_dict`
    (plus `num_batches_tracked`, for old-named files re-saved by a newer PyTorch). The 2017
    files have no `num_batches_tracked` at all; BatchNorm fills it in when loading a plain
    dict, so strict loading still passes.
    """
    out = {}
    for key, value in state.items():
        match = _DENSENET_OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _pm_build(name: str, shared_features: bool = False) -> Builder:
    def build() -> tuple[nn.Module, int]:
        with warnings.catch_warnings():
            # torchvision warns that `pretrained=False` (used inside pretrainedmodels'
            # densenets) is deprecated; it is harmless and would only add noise.
            warnings.simplefilter("ignore", UserWarning)
            import pretrainedmodels

            model = pretrainedmodels.__dict__[name](num_classes=1000, pretrained=None)
        if shared_features:
            # pretrainedmodels' resnext `features` is ONE module-level object created at
            # import time: every model built in a process would share (and co-train) the
            # same weights, and its init would ignore the seed. Copy it and re-initialise.
            model.features = copy.deepcopy(model.features)
            for module in model.features.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        head = model.last_linear  # Linear, or a 1x1 Conv2d for dpn
        num_features = head.in_features if isinstance(head, nn.Linear) else head.in_channels
        # Drop the ImageNet classifier so no parameter goes unused (DDP would complain).
        del model.last_linear
        return model, num_features

    return build


def _pm_spec(
    name: str,
    setting: str,
    features: FeatureFn = _features_attr,
    remap_keys: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    alt_files: tuple[str, ...] = (),
) -> BackboneSpec:
    # The library's own settings table is the single source of input statistics and file
    # names (importing pretrainedmodels costs a few seconds, once per process).
    import pretrainedmodels

    cfg = pretrainedmodels.pretrained_settings[name][setting]
    return BackboneSpec(
        name=name,
        family="pretrainedmodels",
        build=_pm_build(name, shared_features=name.startswith("resnext")),
        features=features,
        input_mean=_triple(cfg["mean"]),
        input_std=_triple(cfg["std"]),
        input_range=(float(cfg["input_range"][0]), float(cfg["input_range"][1])),
        input_space=cfg["input_space"],
        weights_files=(cfg["url"].rsplit("/", 1)[-1], *alt_files),
        weights_url=cfg["url"],
        classifier_prefixes=("last_linear.", "classifier.", "fc."),
        remap_keys=remap_keys,
        description=f"pretrainedmodels {name} ({setting} weights)",
    )


def _pm_specs() -> list[BackboneSpec]:
    densenet: dict[str, Any] = dict(features=_features_densenet, remap_keys=remap_densenet_keys)
    return [
        # torchvision's own file names are accepted too (same weights, old key names).
        _pm_spec("densenet201", "imagenet", alt_files=("densenet201-c1103571.pth",), **densenet),
        _pm_spec("densenet161", "imagenet", alt_files=("densenet161-8d451a50.pth",), **densenet),
        _pm_spec("resnext101_32x4d", "imagenet"),
        _pm_spec("resnext101_64x4d", "imagenet"),
        _pm_spec("se_resnext50_32x4d", "imagenet"),
        _pm_spec("se_resnet50", "imagenet"),
        _pm_spec("dpn92", "imagenet+5k"),  # pretrainedmodels ships dpn92 only as imagenet+5k
        _pm_spec("dpn98", "imagenet"),
    ]


# ------------------------------------------------------------------------------- timm
def _timm_spec(name: str) -> BackboneSpec:
    import timm
    import timm.models

    arch = name[len(TIMM_PREFIX):]
    if not arch or not timm.is_model(arch):
        raise ConfigError(f"unknown timm model {arch!r} (backbone {name!r}); see timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(arch)
    classifier = cfg.classifier if cfg and cfg.classifier else "fc"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def build() -> tuple[nn.Module, int]:
        model = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="")
        return model, int(cast(int, model.num_features))

    # timm's pretrained config names either a direct URL or a Hugging Face Hub repository, whose
    # weights timm itself reads from model.safetensors (or the file the config names).
    url = cfg.url if cfg and isinstance(cfg.url, str) else ""
    if not url and cfg and cfg.hf_hub_id:
        url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{cfg.hf_hub_filename or 'model.safetensors'}"
    files = (f"timm/{arch}.safetensors", f"timm/{arch}.pth")

    return BackboneSpec(
        name=name,
        family="timm",
        build=build,
        features=_features_call,
        input_mean=_triple(cfg.mean) if cfg else (0.485, 0.456, 0.406),
        input_std=_triple(cfg.std) if cfg else (0.229, 0.224, 0.225),
        # the canonical name first: the one the published file is saved as
        weights_files=files if url.endswith(".safetensors") or not url else files[::-1],
        weights_url=url,
        classifier_prefixes=tuple(c + "." for c in classifiers),
        description=f"timm {arch}",
    )


# ------------------------------------------------------------------- camid (from scratch)
def _camid_spec(name: str, stem: int, widths: tuple[int, ...], blocks: int, what: str) -> BackboneSpec:
    def build() -> tuple[nn.Module, int]:
        net = ResidualCNN(stem, widths, blocks)
        return net, net.num_features

    return BackboneSpec(
        name=name,
        family="camid",
        build=build,
        features=_features_call,
        # Residual inputs are centred by the constrained layer; a fixed scale is enough.
        input_mean=(0.5, 0.5, 0.5),
        input_std=(0.25, 0.25, 0.25),
        description=what,
    )


def _camid_specs() -> list[BackboneSpec]:
    return [
        _camid_spec("camid_tiny", 12, (24, 48, 96), 1, "residual CNN, 57k params, CPU demo/tests"),
        _camid_spec("camid_small", 16, (32, 64, 128, 256), 2, "residual CNN, 1.2M params, CPU"),
    ]


# --------------------------------------------------------------------------- registry
class _Registry(Mapping):
    """Name -> BackboneSpec, built on first use: the pretrainedmodels entries import that
    library (and torchvision), a few seconds that camid_tiny runs and `--help` should not pay."""

    def __init__(self) -> None:
        self._specs: dict[str, BackboneSpec] | None = None

    def _all(self) -> dict[str, BackboneSpec]:
        if self._specs is None:
            self._specs = {spec.name: spec for spec in _pm_specs() + list(_CAMID.values())}
        return self._specs

    def __getitem__(self, name: str) -> BackboneSpec:
        return _CAMID[name] if name in _CAMID else self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in _CAMID or name in self._all()

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


_CAMID: dict[str, BackboneSpec] = {spec.name: spec for spec in _camid_specs()}
BACKBONES: Mapping[str, BackboneSpec] = _Registry()


def list_backbones() -> list[str]:
    """Registered backbone names; any `timm/<model>` is accepted on top of these."""
    return list(BACKBONES)


def get_spec(backbone: str) -> BackboneSpec:
    """Look a backbone up by name (registered, or `timm/<model>`)."""
    if backbone.startswith(TIMM_PREFIX):
        return _timm_spec(backbone)
    if backbone in BACKBONES:
        return BACKBONES[backbone]
    raise ConfigError(
        f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)} or timm/<model>"
    )


def weights_table() -> list[tuple[str, str]]:
    """(backbone, expected file names under weights_dir) for every backbone with ImageNet weights."""
    return [(s.name, " or ".join(s.weights_files)) for s in BACKBONES.values() if s.weights_files]


# ---------------------------------------------------------------------------- weights
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors, or a torch file read with ``weights_only``)."""
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader error means the file is unusable; say which file
        raise CheckpointError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc
    # Training checkpoints wrap the weights; accept the common wrappers.
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def find_weights(spec: BackboneSpec, weights_dir: str | Path | None) -> Path | None:
    """The first accepted weights file present under weights_dir, or None."""
    if weights_dir is None:
        return None
    for file_name in spec.weights_files:
        path = Path(weights_dir) / file_name
        if path.is_file():
            return path
    return None


def load_pretrained(backbone: nn.Module, spec: BackboneSpec, weights_dir: str | Path | None) -> Path | None:
    """Load ImageNet weights into `backbone` in place; returns the file used, or None.

    A missing file is not an error (random init is a valid, if much worse, start) but is
    reported loudly. A present file must match the architecture exactly apart from the
    ImageNet classifier: a wrong or truncated file raises CheckpointError.
    """
    if not spec.weights_files:
        return None
    path = find_weights(spec, weights_dir)
    if path is None:
        where = f"folder {Path(weights_dir).resolve()}" if weights_dir is not None else "no weights_dir set"
        print(
            f"WARNING: no ImageNet weights for backbone {spec.name!r}: expected "
            f"{' or '.join(spec.weights_files)} ({where}; config weights_dir). "
            f"Starting from RANDOM INIT; accuracy will be far lower.",
            file=sys.stderr,
        )
        return None
    state = read_state_dict(path)
    if spec.remap_keys is not None:
        state = spec.remap_keys(state)
    state = {k: v for k, v in state.items() if not k.startswith(spec.classifier_prefixes)}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights file {path} does not fit backbone {spec.name!r}: {exc}") from exc
    return path
