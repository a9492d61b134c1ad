"""Backbone registry and head: every registered backbone (+ one timm model) builds and steps on CPU."""
import dataclasses
import json
import re

import pytest
import torch
from torch import nn

from camid.errors import CamidError
from camid.models.classifier import CamidNet, build_model, rebuild
from camid.models.registry import (
    BACKBONES,
    get_spec,
    list_backbones,
    load_pretrained,
    remap_densenet_keys,
    weights_table,
)
from camid.models.residual import ResidualConv2d

RECIPE = ["densenet201", "densenet161", "resnext101_32x4d", "resnext101_64x4d",
          "se_resnext50_32x4d", "se_resnet50", "dpn92", "dpn98"]
ALL = list_backbones() + ["timm/resnet18"]
WITH_WEIGHTS = [name for name in ALL if get_spec(name).weights_files]
NUM_CLASSES = 5
SIZE = 32  # the smallest input every backbone accepts (stride 32 -> 1x1 map); big nets are slow on CPU


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Inputs here are tiny, so each op is mostly thread start/barrier overhead; with two
    # OpenMP threads on a busy 2-core box the big nets ran ~10x slower than with one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ALL)
def net(request) -> CamidNet:
    # Module scope + params: pytest runs all tests of one backbone together, so only one
    # big model is alive at a time and each is built once.
    torch.manual_seed(0)
    return build_model(request.param, NUM_CLASSES, dropout=0.3, pretrained=False)


def batch(n: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def first_conv(model: CamidNet) -> nn.Conv2d:
    return next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))


def test_registry_holds_the_recipe_backbones_and_small_ones():
    assert set(RECIPE) <= set(list_backbones())
    assert {"camid_tiny", "camid_small"} <= set(BACKBONES)


def test_forward_backward_reaches_first_conv_and_head(net):
    net.train()
    logits = net(net.normalize(batch()), torch.tensor([0.0, 1.0]))
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == torch.float32
    logits.logsumexp(1).sum().backward()
    for name, weight in [("first conv", first_conv(net).weight), ("head", net.head.weight)]:
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
        assert torch.isfinite(weight.grad).all(), name
    assert net.head.weight.grad[:, -1].abs().sum() > 0, "the manip column gets gradient"
    # No dead parameters (e.g. a leftover ImageNet classifier): DDP fails on unused ones.
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    net.zero_grad(set_to_none=True)


def test_manip_flag_shifts_logits_by_its_head_column(net):
    net.eval()
    x = net.normalize(batch(1))
    with torch.no_grad():
        delta = net(x, torch.ones(1)) - net(x, torch.zeros(1))
    assert delta.abs().sum() > 0
    torch.testing.assert_close(delta[0], net.head.weight[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [32, 72])
def test_any_input_size_from_32(net, size):
    net.eval()
    with torch.no_grad():
        out = net(net.normalize(batch(1, size)), torch.zeros(1))
    assert out.shape == (1, NUM_CLASSES)


def test_normalize_uses_the_backbones_own_statistics(net):
    spec = get_spec(net.backbone_name)
    if spec.family == "pretrainedmodels":  # independent source: the library's own table
        import pretrainedmodels

        cfg = next(iter(pretrainedmodels.pretrained_settings[net.backbone_name].values()))
        assert net.input_mean == tuple(cfg["mean"]) and net.input_std == tuple(cfg["std"])
        assert net.input_range == tuple(cfg["input_range"])
    x = batch(2, 8)
    lo, hi = net.input_range
    mean = torch.tensor(net.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(net.input_std).view(1, 3, 1, 1)
    expected = (x.float() / 255 * (hi - lo) + lo - mean) / std
    got = net.normalize(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(net.normalize(x.float()), got)


@pytest.mark.parametrize("name, pixel, expected", [
    ("densenet201", 255, (1 - 0.485) / 0.229),    # ImageNet mean/std on [0, 1]
    ("dpn92", 124, 0.0),                           # dpn: mean 124/255 on the red channel
    ("timm/resnet18", 0, -0.485 / 0.229),
    ("camid_tiny", 255, 2.0),                      # 0.5 / 0.25 on [0, 1]
])
def test_normalize_known_values(name, pixel, expected):
    # Only the normalisation is exercised: the spec's statistics on a cheap stand-in backbone.
    tiny = BACKBONES["camid_tiny"]
    stand_in = CamidNet(dataclasses.replace(get_spec(name), build=tiny.build, features=tiny.features), 3)
    x = torch.full((1, 3, 2, 2), pixel, dtype=torch.uint8)
    assert stand_in.normalize(x)[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_rebuild_and_load_state_dict_round_trip(net):
    assert json.loads(json.dumps(net.model_args)) == net.model_args  # storable in a checkpoint
    twin = rebuild(net.model_args)
    assert type(twin.backbone) is type(net.backbone) and twin.num_classes == NUM_CLASSES
    twin.load_state_dict(net.state_dict())
    net.eval(), twin.eval()
    x, manip = net.normalize(batch()), torch.tensor([1.0, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(twin(x, manip), net(x, manip), rtol=0, atol=1e-6)


def _imagenet_checkpoint(model: CamidNet) -> dict[str, torch.Tensor]:
    """The model's backbone as its ImageNet checkpoint would store it."""
    name, n = model.backbone_name, model.num_features
    # The pretrainedmodels files date from 2017: no BatchNorm num_batches_tracked keys.
    old_file = get_spec(name).family == "pretrainedmodels"
    state = {k: v.clone() for k, v in model.backbone.state_dict().items()
             if not (old_file and k.endswith("num_batches_tracked"))}
    if name.startswith("densenet"):
        # Old torchvision key names (norm1 -> norm.1) and torchvision's `classifier`.
        state = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
        assert any(".norm.1." in k for k in state)
    # ImageNet classifier as each family names and shapes it (dpn: a 1x1 conv).
    head = "last_linear"
    shape: tuple[int, ...] = (1000, n)
    if name.startswith("densenet"):
        head = "classifier"
    elif name.startswith("dpn"):
        shape = (1000, n, 1, 1)
    elif name.startswith("timm/"):
        head = "fc"
    state.update({f"{head}.weight": torch.randn(shape), f"{head}.bias": torch.zeros(1000)})
    return state


def test_imagenet_weights_file_is_loaded(net, tmp_path, capsys):
    spec = get_spec(net.backbone_name)
    if not spec.weights_files:
        assert load_pretrained(net.backbone, spec, tmp_path) is None  # trained from scratch
        assert capsys.readouterr().err == ""
        return
    # densenet161 uses torchvision's file name (an accepted alternative), the rest the canonical one.
    file_name = spec.weights_files[-1] if net.backbone_name == "densenet161" else spec.weights_files[0]
    path = tmp_path / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _imagenet_checkpoint(net)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    del state
    torch.manual_seed(123)  # a different random init, so equality proves the load
    loaded = build_model(net.backbone_name, NUM_CLASSES, weights_dir=tmp_path, pretrained=True)
    assert "WARNING" not in capsys.readouterr().err
    net.eval(), loaded.eval()
    x = net.normalize(batch())
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x), net.features(x), rtol=0, atol=0)


def test_missing_weights_warn_with_the_expected_file_name(net, tmp_path, capsys):
    spec = get_spec(net.backbone_name)
    assert load_pretrained(net.backbone, spec, tmp_path / "empty") is None
    err = capsys.readouterr().err
    if spec.weights_files:
        assert "WARNING" in err and spec.weights_files[0] in err and "empty" in err
    else:
        assert err == ""


def test_build_model_warns_and_continues_without_weights(tmp_path, capsys):
    model = build_model("timm/resnet18", 3, weights_dir=tmp_path)
    assert isinstance(model, CamidNet)
    err = capsys.readouterr().err
    assert "WARNING" in err and "timm/resnet18.safetensors" in err and str(tmp_path) in err


def test_corrupt_or_wrong_weights_file_fails_clearly(tmp_path):
    path = tmp_path / get_spec("se_resnet50").weights_files[0]
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CamidError, match=r"cannot read weights file .*se_resnet50-ce0d4300\.pth"):
        build_model("se_resnet50", 3, weights_dir=tmp_path)
    # A readable file from another architecture must not load half-way silently.
    torch.save(build_model("camid_tiny", 3, pretrained=False).backbone.state_dict(), path)
    with pytest.raises(CamidError, match="does not fit backbone 'se_resnet50'"):
        build_model("se_resnet50", 3, weights_dir=tmp_path)


def test_weights_table_uses_the_original_checkpoint_file_names():
    import pretrainedmodels

    table = dict(weights_table())
    assert set(table) == set(RECIPE)
    for name, files in table.items():
        url = next(iter(pretrainedmodels.pretrained_settings[name].values()))["url"]
        assert files.split(" or ")[0] == url.rsplit("/", 1)[-1]
    assert table["dpn92"].startswith("dpn92_extra-")  # imagenet+5k weights
    assert "densenet201-c1103571.pth" in table["densenet201"]


def test_densenet_key_remap():
    state = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.norm5.bias": 2,
             "features.denseblock4.denselayer32.conv.2.weight": 3}
    assert remap_densenet_keys(state) == {"features.denseblock1.denselayer1.norm1.weight": 1,
                                          "features.norm5.bias": 2,
                                          "features.denseblock4.denselayer32.conv2.weight": 3}


def test_resnext_models_do_not_share_weights_and_follow_the_seed():
    # pretrainedmodels' resnext `features` is one module-level object; ours must be copies.
    models = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        models.append(build_model("resnext101_32x4d", 3, pretrained=False))
    w = [first_conv(m).weight for m in models]
    assert w[0] is not w[1] and w[0].data_ptr() != w[1].data_ptr()
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_camid_tiny_is_small_and_sees_only_residuals():
    model = build_model("camid_tiny", 10, pretrained=False)
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 200_000
    conv = first_conv(model)
    assert isinstance(conv, ResidualConv2d)
    flat = torch.full((1, 3, 16, 16), 0.7)
    with torch.no_grad():
        out = conv(flat)
    assert out[..., 2:-2, 2:-2].abs().max() < 1e-5, "a flat image has no residual (away from padding)"


@pytest.mark.parametrize("bad", ["resnet9000", "timm/not_a_model", "timm/"])
def test_unknown_backbone_is_a_clear_error(bad):
    with pytest.raises(CamidError, match="unknown"):
        build_model(bad, 3, pretrained=False)


@pytest.mark.parametrize("args", [{"backbone": "camid_tiny"},
                                  {"backbone": "camid_tiny", "num_classes": 3, "lr": 1}])
def test_rebuild_rejects_bad_model_args(args):
    with pytest.raises(CamidError, match="model_args"):
        rebuild(args)


@pytest.mark.parametrize("kwargs", [{"num_classes": 1}, {"num_classes": 3, "dropout": 1.0}])
def test_build_model_validates_arguments(kwargs):
    with pytest.raises(CamidError):
        build_model("camid_tiny", pretrained=False, **kwargs)


def test_mismatched_manip_batch_is_rejected():
    model = build_model("camid_tiny", 3, pretrained=False).eval()
    with pytest.raises(ValueError, match="manip"):
        model(model.normalize(batch(2, 32)), torch.zeros(3))
