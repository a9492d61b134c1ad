
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import errors
from camid.data import folds, images, layout
from conftest import write_jpeg


def table(n_per_class=(10, 7, 13)):
    rows = [{"fname": f"train/c{c}/{i}.jpg", "path": f"/x/c{c}/{i}.jpg", "label": f"c{c}"}
            for c, n in enumerate(n_per_class) for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_no_image_in_two_folds_and_every_image_validated_once(k):
    t = table()
    f = folds.make_folds(t, "kfold", k, seed=1)
    assert len(f) == len(t) and f["fname"].is_unique
    assert set(f["fname"]) == set(t["fname"])
    assert set(f["fold"]) == set(range(k))
    for fold in range(k):  # train and validation sets of a job never share an image
        val = set(f.loc[f.fold == fold, "fname"])
        train = set(f.loc[f.fold != fold, "fname"])
        assert val and not (val & train) and val | train == set(t["fname"])


def test_kfold_is_stratified_and_balanced():
    f = folds.make_folds(table(), "kfold", 3, seed=7)
    per = f.groupby(["label", "fold"]).size().unstack()
    assert (per.max(axis=1) - per.min(axis=1)).max() <= 1
    sizes = f.groupby("fold").size()
    assert sizes.max() - sizes.min() <= 1


def test_folds_are_deterministic_for_a_seed_and_change_with_it(tmp_path):
    t = table()
    a = folds.make_folds(t.sample(frac=1, random_state=0), "kfold", 4, seed=3)
    b = folds.make_folds(t, "kfold", 4, seed=3)
    c = folds.make_folds(t, "kfold", 4, seed=4)
    assert a.equals(b)  # input order does not matter
    assert not a["fold"].equals(c["fold"])
    folds.write_folds(a.assign(source="train"), tmp_path / "a.csv")
    folds.write_folds(b.assign(source="train"), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_groups_stay_together():
    t = table((12, 12))
    t["group"] = [f"g{i // 3}" for i in range(len(t))]  # near-duplicate clusters of 3
    f = folds.make_folds(t, "kfold", 3, seed=0, group_col="group")
    assert (f.groupby("group")["fold"].nunique() == 1).all()


def test_holdout_mode():
    f = folds.make_folds(table((10, 10, 10)), "holdout", holdout_fraction=0.2, seed=0)
    assert sorted(f["fold"].unique()) == [-1, 0]
    assert (f[f.fold == 0].groupby("label").size() == 2).all()
    assert folds.fold_ids(f) == [0]


def test_scan_train_layout(kaggle_layout):
    (kaggle_layout / "train" / "cam-a" / "notes.txt").write_text("x")
    (kaggle_layout / "train" / "cam-a" / ".DS_Store").write_text("x")
    (kaggle_layout / "train" / "cam-b" / "sub").mkdir()
    write_jpeg(kaggle_layout / "train" / "cam-b" / "sub" / "deep.JPEG")
    classes, scan = layout.scan_train(kaggle_layout)
    assert classes == ["cam-a", "cam-b", "cam-c"]
    assert len(scan.table) == 22
    assert "train/cam-b/sub/deep.JPEG" in set(scan.table["fname"])
    assert sum("notes.txt" in p for p, _ in scan.skipped) == 1
    assert (scan.table["source"] == "train").all()


def test_scan_train_with_extra_folder(kaggle_layout, tmp_path):
    write_jpeg(tmp_path / "ext" / "cam-c" / "cam-c_0.jpg")  # same file name as a Kaggle one
    write_jpeg(tmp_path / "ext" / "unknown-cam" / "z.jpg")
    classes, scan = layout.scan_train(kaggle_layout, extra_dirs=[tmp_path / "ext"])
    assert "ext0/cam-c/cam-c_0.jpg" in set(scan.table["fname"])
    assert scan.table["fname"].is_unique
    assert any("not a known class" in r for _, r in scan.skipped)


def test_scan_errors(tmp_path):
    with pytest.raises(errors.DataError, match="training folder not found"):
        layout.scan_train(tmp_path)
    (tmp_path / "train" / "only").mkdir(parents=True)
    with pytest.raises(errors.DataError, match="at least 2"):
        layout.scan_train(tmp_path)


def test_scan_test_flags(kaggle_layout):
    t = layout.scan_test(kaggle_layout)
    assert t["fname"].tolist() == sorted(t["fname"])
    assert t["manip"].tolist() == [0, 1, 0, 1]
    Image.new("RGB", (8, 8)).save(kaggle_layout / "test" / "holiday.tif")
    with pytest.raises(errors.DataError, match="neither"):
        layout.scan_test(kaggle_layout)


def test_read_folds_checks(tmp_path):
    f = folds.make_folds(table(), "kfold", 2).assign(source="train")
    folds.write_folds(pd.concat([f, f.head(1)]), tmp_path / "dup.csv")
    with pytest.raises(errors.DataError, match="more than once"):
        folds.read_folds(tmp_path / "dup.csv")
    folds.write_folds(f, tmp_path / "ok.csv")
    with pytest.raises(errors.DataError, match="not in the class list"):
        folds.read_folds(tmp_path / "ok.csv", ["c0", "c1"])
    with pytest.raises(errors.DataError, match="not found"):
        folds.read_folds(tmp_path / "missing.csv")


# --- robust image reading -------------------------------------------------------------------

def _save(path, arr_or_img, **kw):
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def test_read_image_converts_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    cases = {
        "rgb.png": Image.fromarray(rgb),
        "gray.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((9, 11), 128, np.uint8)])),
        "pal.png": Image.fromarray(rgb).convert("P"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, img in cases.items():
        out = images.read_image(_save(tmp_path / name, img))
        assert out.dtype == np.uint8 and out.shape == (9, 11, 3), name
    assert np.array_equal(images.read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(images.read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, colour kept
    sixteen = (np.arange(9 * 11, dtype=np.uint16).reshape(9, 11) * 600)
    out = images.read_image(_save(tmp_path / "16bit.tif", Image.fromarray(sixteen)))
    assert out.shape == (9, 11, 3) and out.max() > 200  # scaled from 16 bits, not clipped


@pytest.mark.parametrize("maker,reason", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("hello, not an image"), "not a recognised"),
    (lambda p: p.write_bytes(write_jpeg(p, 64, 64).read_bytes()[:700]), "corrupt or truncated"),
    (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50), "corrupt or truncated|not a recognised"),
])
def test_read_image_refuses_bad_files_with_a_reason(tmp_path, maker, reason):
    p = tmp_path / "bad.jpg"
    maker(p)
    with pytest.raises(errors.ImageReadError, match=reason) as exc:
        images.read_image(p)
    assert exc.value.path == str(p)


def test_read_image_refuses_decompression_bombs(tmp_path, monkeypatch):
    p = _save(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(errors.ImageReadError, match="too large"):
        images.read_image(p)


def test_external_photos_only_ever_train(kaggle_layout, tmp_path):
    """Extra-folder photos get fold -1 (train only): the OOF score keeps meaning the
    competition's training devices held out; the kaggle photos keep their stratified folds."""
    extra = tmp_path / "extra"
    for cls in ("cam-a", "cam-b"):
        (extra / cls).mkdir(parents=True)
        for i in range(5):
            write_jpeg(extra / cls / f"e{i}.jpg")
    _, scan = layout.scan_train(kaggle_layout, None, [extra])
    out = folds.make_folds(scan.table, "kfold", 2, seed=3)
    ext = out[out["source"] != "train"]
    assert len(ext) == 10 and (ext["fold"] == -1).all()
    own = out[out["source"] == "train"]
    assert set(own["fold"]) == {0, 1}
    alone = folds.make_folds(scan.table[scan.table["source"] == "train"], "kfold", 2, seed=3)
    assert own.set_index("fname")["fold"].equals(alone.set_index("fname")["fold"])  # same folds as without them
    mixed = folds.make_folds(scan.table, "kfold", 2, seed=3, external="kfold")
    assert set(mixed.loc[mixed["source"] != "train", "fold"]) == {0, 1}


def _solution(tmp_path, rows: str):
    path = tmp_path / layout.SOLUTION
    path.write_text(rows)
    return path


def test_read_solution_reads_strings_and_checks_classes(tmp_path):
    path = _solution(tmp_path, "fname,camera,manipulation\nimg_1_unalt.tif,NA,none\nimg_2_manip.tif,b,jpeg70\n")
    sol = layout.read_solution(path, ["NA", "b"])
    assert sol["camera"].tolist() == ["NA", "b"] and sol["manipulation"].tolist() == ["none", "jpeg70"]
    assert layout.solution_labels(tmp_path).to_dict() == {"img_1_unalt.tif": "NA", "img_2_manip.tif": "b"}
    assert layout.solution_labels(tmp_path / "elsewhere") is None  # no solution.csv: no labels


@pytest.mark.parametrize("rows, classes, message", [
    ("fname,label\nimg_1_unalt.tif,a\n", None, r"missing column\(s\) \['camera'\]"),
    ("fname,camera\nimg_1_unalt.tif,a\nimg_1_unalt.tif,b\n", None, "duplicate file names: 'img_1_unalt.tif'"),
    ("fname,camera\nimg_1_unalt.tif,a\nimg_2_unalt.tif,Nokia\n", ["a", "b"], "outside the class list: 'Nokia'"),
    ("", None, "cannot parse solution"),
])
def test_read_solution_refuses_a_bad_file(tmp_path, rows, classes, message):
    path = _solution(tmp_path, rows)
    with pytest.raises(errors.SubmissionError, match=message):
        layout.read_solution(path, classes)
    if classes is None:  # the labels behind +prnu's and pseudo's precision: read with the same checks
        with pytest.raises(errors.SubmissionError, match=message):
            layout.solution_labels(tmp_path)


def test_read_solution_names_a_missing_file(tmp_path):
    with pytest.raises(errors.SubmissionError, match="solution not found"):
        layout.read_solution(tmp_path / layout.SOLUTION)
