"""Issue 8, point 3: every stage checks its inputs and fails with one clear line.

Through the CLI a bad input is exit code 2 and a single ``camid <stage>: error: ...``
line that names the offending file/key, never a traceback: class sets and order across
probability tables, file-name and variant sets, NaN/inf, rows not summing to 1, damaged
files, config keys and types, folds that no longer describe the data.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from camid.data.folds import check_folds_cover, read_folds
from camid.data.layout import scan_train
from camid.errors import DataError
from camid.infer.table import KEY_COLUMNS, write_table
from camid.util.io import write_csv, write_parquet
from reliability_tiny import CLASSES, TEST_FILES, camid, jpeg_bytes, make_table, one_error, write_config


@pytest.fixture
def ws(tmp_path):
    """A workdir with a config and a sample submission; tables are added per test."""
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "sample_submission.csv", pd.DataFrame({"fname": TEST_FILES, "camera": "cam-a"}))
    cfg = write_config(tmp_path / "c.yaml", data, models=["a", "b"])
    return tmp_path, ["--config", cfg, "--workdir", tmp_path]


def put(root: Path, run: str, df: pd.DataFrame, validate: bool = True) -> Path:
    path = root / "oof" / f"{run}.none.parquet"
    if validate:
        write_table(df, path, [c for c in df.columns if c not in KEY_COLUMNS], meta={})
    else:  # what a buggy or foreign writer could leave: bypasses write_table's checks
        write_parquet(path, df)
    return path


def blend_error(capsys, common) -> str:
    capsys.readouterr()
    assert camid("blend", *common, "--models", "a,b", "--strategies", "gmean") == 2
    return one_error(capsys.readouterr().err, "blend")


# ------------------------------------------------------------------ tables across models

def test_blend_accepts_matching_tables(ws, capsys):
    root, common = ws
    put(root, "a", make_table(seed=1))
    put(root, "b", make_table(seed=2))
    assert camid("blend", *common, "--models", "a,b", "--strategies", "gmean,gmean+hungarian") == 0
    assert camid("submission", *common) == 0


def test_classes_in_another_order_are_refused(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    put(root, "b", make_table(classes=["cam-b", "cam-a", "cam-c"]))
    err = blend_error(capsys, common)
    assert "b: the same classes in a different order than a" in err


def test_different_class_sets_are_refused(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    put(root, "b", make_table(classes=["cam-a", "cam-b", "cam-x"]))
    assert "b: different classes than a" in blend_error(capsys, common)


def test_configured_class_list_must_match_every_table(ws, capsys, tmp_path):
    root, common = ws
    put(root, "a", make_table())
    put(root, "b", make_table())
    cfg = Path(common[1])
    cfg.write_text(cfg.read_text() + "classes: [cam-a, cam-c, cam-b]\n")
    err = blend_error(capsys, common)
    assert "a.none.parquet: class columns" in err and "differ from the class list" in err


def test_different_file_names_are_refused(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    put(root, "b", make_table(test_files=TEST_FILES[:-1] + ["img_00000ff_unalt.tif"]))
    err = blend_error(capsys, common)
    assert "b: file names differ from a" in err and "img_00000ff_unalt.tif" in err


def test_different_variants_of_the_same_files_are_refused(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    other = make_table()
    other.loc[other["aug"] == "jpeg70", "aug"] = "gamma0.8"
    put(root, "b", other)
    assert "b: variants (fname, aug) differ from a" in blend_error(capsys, common)


def test_a_label_that_differs_between_tables_is_refused(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    other = make_table()
    other.loc[0, "label"] = "cam-c"
    put(root, "b", other)
    assert "b: column 'label' differs from a in 1 rows" in blend_error(capsys, common)


@pytest.mark.parametrize("damage, words", [
    ("nan", "NaN or infinite probabilities"),
    ("inf", "NaN or infinite probabilities"),
    ("sum", "rows must sum to 1"),
    ("negative", "negative probabilities"),
    ("duplicate", "duplicate (fname, aug) rows"),
    ("split", "split must be oof or test"),
    ("no_label", "missing key columns ['label']"),
    ("truncated", "cannot read parquet"),
    ("manip", "manip must be 0 or 1"),
    ("text_probs", "class columns must hold numbers; not numeric: ['cam-b']"),
    ("unlabelled", "OOF rows without a label"),
])
def test_damaged_tables_are_refused_naming_the_file(ws, capsys, damage, words):
    root, common = ws
    put(root, "a", make_table())
    bad = make_table(seed=3)
    if damage == "nan":
        bad.loc[2, "cam-b"] = np.nan
    elif damage == "inf":
        bad.loc[2, "cam-b"] = np.inf
    elif damage == "sum":
        bad.loc[4, CLASSES] = [0.5, 0.3, 0.1]
    elif damage == "negative":
        bad.loc[4, CLASSES] = [1.2, -0.1, -0.1]
    elif damage == "duplicate":
        bad = pd.concat([bad, bad.iloc[[0]]], ignore_index=True)
    elif damage == "split":
        bad.loc[0, "split"] = "train"
    elif damage == "no_label":
        bad = bad.drop(columns="label")
    elif damage == "manip":
        bad.loc[3, "manip"] = 2
    elif damage == "text_probs":
        bad["cam-b"] = bad["cam-b"].map(lambda v: f"{v:.3f}")
    elif damage == "unlabelled":
        bad.loc[0, "label"] = ""
    path = put(root, "b", bad, validate=False)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = blend_error(capsys, common)
    assert str(path) in err and words in err


def test_a_blend_table_missing_test_files_makes_no_submission(ws, capsys):
    root, common = ws
    put(root, "a", make_table(test_files=TEST_FILES[:-1]))
    assert camid("blend", *common, "--models", "a", "--strategies", "gmean") == 0
    capsys.readouterr()
    assert camid("submission", *common) == 2
    err = one_error(capsys.readouterr().err, "submission")
    assert "no test prediction for 1 file(s)" in err and TEST_FILES[-1] in err
    assert not (root / "submissions").exists() or not list((root / "submissions").glob("*.csv"))


def test_blend_settings_are_checked_before_any_work(ws, capsys):
    root, common = ws
    put(root, "a", make_table())
    capsys.readouterr()
    assert camid("blend", *common, "--models", "a", "--strategies", "gmean+hungrian") == 2
    assert "unknown step 'hungrian'" in one_error(capsys.readouterr().err, "blend")
    cfg = Path(common[1])
    settings = yaml.safe_load(cfg.read_text())
    settings["blend"].update(models=["a"], weights=[1, 2])
    cfg.write_text(yaml.safe_dump(settings))
    assert camid("blend", *common) == 2
    assert "blend.weights has 2 entries but blend.models lists 1" in one_error(capsys.readouterr().err, "blend")
    assert not (root / "oof" / "blend").exists()


# ------------------------------------------------------------------ config

@pytest.mark.parametrize("yaml_text, words", [
    ("seed: 1\nfolds: {n_folds: 2, sede: 3}\n", "folds: unknown key(s) ['sede']"),
    ("trian: {epochs: 3}\n", "unknown key(s) ['trian']"),
    ("train: {epochs: three}\n", "train.epochs: expected an integer, got 'three'"),
    ("train: {epochs: 2.5}\n", "train.epochs: expected an integer, got 2.5"),
    ("train: {amp: 1}\n", "train.amp: expected true/false, got 1"),
    ("train: {lr: '1e-4'}\n", "train.lr: expected a number, got '1e-4'"),
    ("train: {max_skip_fraction: yes}\n", "train.max_skip_fraction: expected a number, got True"),
    ("device: gpu\n", "device: 'gpu' is not one of ['auto', 'cpu', 'cuda']"),
    ("models: [{backbone: camid_tiny, dropot: 0.1}]\n", "models[0]: unknown key(s) ['dropot']"),
    ("models: {backbone: camid_tiny}\n", "models: expected a list"),
    ("predict: [tta10]\n", "predict: expected a mapping"),
    ("- just\n- a list\n", "expected a mapping"),
    ("train: {epochs: 3\n", "not valid YAML"),
    ("folds: {n_folds: 1}\n", "folds.n_folds must be >= 2"),
    ("train: {input_size: 31}\n", "train.input_size must be even"),
])
def test_config_keys_and_types_are_checked_with_the_key_named(tmp_path, capsys, yaml_text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    assert camid("folds", "--config", cfg, "--workdir", tmp_path, "--data", tmp_path) == 2
    err = one_error(capsys.readouterr().err, "folds")
    assert words in err, err


def test_a_missing_config_file_is_one_clear_line(tmp_path, capsys):
    assert camid("blend", "--config", tmp_path / "nope.yaml", "--workdir", tmp_path) == 2
    assert "config file not found" in one_error(capsys.readouterr().err, "blend")


# ------------------------------------------------------------------ folds vs data

@pytest.fixture
def foldsws(tmp_path):
    data = tmp_path / "data"
    for c, cls in enumerate(CLASSES):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(4):
            (data / "train" / cls / f"{i}.jpg").write_bytes(jpeg_bytes(40, 48, seed=10 * c + i))
    cfg = write_config(tmp_path / "c.yaml", data)
    common = ["--config", cfg, "--workdir", tmp_path]
    assert camid("folds", *common) == 0
    return tmp_path, data, common


def _cover(data: Path, folds_csv: Path) -> None:
    check_folds_cover(read_folds(folds_csv), scan_train(data)[1].table, str(folds_csv))


def test_folds_cover_the_data_they_were_made_from(foldsws):
    root, data, _ = foldsws
    _cover(data, root / "models" / "folds.csv")


def test_an_image_added_after_the_folds_is_reported(foldsws):
    root, data, _ = foldsws
    (data / "train" / "cam-b" / "new.jpg").write_bytes(jpeg_bytes(seed=99))
    with pytest.raises(DataError, match=r"1 training image\(s\) on disk are not in any fold.*cam-b/new.jpg"):
        _cover(data, root / "models" / "folds.csv")


def test_an_image_that_disappeared_is_reported(foldsws):
    root, data, _ = foldsws
    (data / "train" / "cam-a" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) listed no longer exist.*cam-a/2.jpg"):
        _cover(data, root / "models" / "folds.csv")


def test_an_image_moved_to_another_class_is_reported(foldsws):
    root, data, _ = foldsws
    shutil.move(data / "train" / "cam-a" / "2.jpg", data / "train" / "cam-c" / "moved.jpg")
    with pytest.raises(DataError, match="not in any fold"):
        _cover(data, root / "models" / "folds.csv")


def test_a_moved_data_folder_is_reported(foldsws, tmp_path):
    root, data, _ = foldsws
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)  # same files, but folds.csv paths point at the old folder
    shutil.rmtree(data)
    with pytest.raises(DataError, match="listed path"):
        _cover(moved, root / "models" / "folds.csv")


@pytest.mark.parametrize("damage, words", [
    ("fold_nan", "fold must be an integer >= -1"),
    ("fold_text", "fold must be an integer >= -1"),
    ("duplicate", "an image appears more than once"),
    ("label", "labels not in the class list: ['cam-z']"),
    ("no_column", "missing columns ['fold']"),
    ("empty_file", "cannot parse folds CSV"),
])
def test_a_damaged_folds_csv_is_refused_by_training(foldsws, capsys, damage, words):
    root, data, common = foldsws
    path = root / "models" / "folds.csv"
    folds = pd.read_csv(path, dtype=str, keep_default_na=False)
    if damage == "fold_nan":
        folds.loc[1, "fold"] = ""
    elif damage == "fold_text":
        folds.loc[1, "fold"] = "first"
    elif damage == "duplicate":
        folds = pd.concat([folds, folds.iloc[[0]]])
    elif damage == "label":
        folds.loc[1, "label"] = "cam-z"
    elif damage == "no_column":
        folds = folds.drop(columns="fold")
    folds.to_csv(path, index=False)
    if damage == "empty_file":
        path.write_bytes(b"")
    capsys.readouterr()
    assert camid("train", *common) == 2
    err = one_error(capsys.readouterr().err, "train")
    assert words in err and str(path) in err


def test_training_refuses_folds_that_do_not_cover_the_data(foldsws, capsys):
    root, data, common = foldsws
    (data / "train" / "cam-b" / "new.jpg").write_bytes(jpeg_bytes(seed=99))
    capsys.readouterr()
    assert camid("train", *common) == 2
    err = one_error(capsys.readouterr().err, "train")
    assert "not in any fold" in err and "cam-b/new.jpg" in err


def test_runs_trained_on_other_folds_are_not_considered_done(foldsws):
    from camid.config import load_config
    from camid.train.trainer import is_done
    from camid.workspace import Workspace

    root, data, common = foldsws
    assert camid("train", *common, "--fold", 0) == 0
    cfg = load_config(common[1])
    ws = Workspace(root, data)
    assert is_done(ws, cfg, "camid_tiny", 0)
    (data / "train" / "cam-b" / "new.jpg").write_bytes(jpeg_bytes(seed=99))
    assert camid("folds", *common) == 0  # same settings, new data: images change folds
    assert not is_done(ws, cfg, "camid_tiny", 0)
