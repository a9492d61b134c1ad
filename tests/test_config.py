from pathlib import Path

import pytest

from camid.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_load(profile):
    if profile.name == "external_rules.yaml":
        pytest.skip("rules file, validated by its own loader in test_filter_external")
    cfg = load_config(profile)
    assert cfg.models and cfg.digest() == load_config(profile).digest()


def test_kaggle_profile_has_the_eight_recipe_backbones():
    names = [m.backbone for m in load_config(REPO / "configs/kaggle.yaml").models]
    assert names == ["densenet201", "densenet161", "resnext101_32x4d", "resnext101_64x4d",
                     "se_resnext50_32x4d", "se_resnet50", "dpn92", "dpn98"]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,match", [
    ("trian: {epochs: 3}", "unknown key"),
    ("train: {epoch: 3}", r"config.*train.*unknown key.*epoch"),
    ("train: {epochs: three}", "expected an integer"),
    ("train: {lr: true}", "expected a number"),
    ("train: {orientation: d8}", "not one of"),
    ("models: [{backbone: 3}]", "expected a string"),
    ("models: {backbone: x}", "expected a list"),
    ("folds: {mode: kfold, n_folds: 1}", "n_folds"),
    ("train: {input_size: 481}", "even"),
    ("models: [{backbone: a}, {backbone: a}]", "duplicate"),
    ("[1, 2", "not valid YAML"),
])
def test_bad_configs_are_refused_with_a_clear_message(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text))


def test_missing_file_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    cfg = load_config(write(tmp_path, "train: {epochs: 3}"), {"train.batch_size": 4, "seed": 9})
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.seed) == (3, 4, 9)
    assert cfg.train.lr == 1e-4  # untouched defaults are the recipe's
