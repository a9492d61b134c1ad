"""`camid simulate --external`: the scrape-like pool, its truth and rules, and the filter's score on it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import cli
from camid.forensics import filter_external as fe
from camid.forensics import filter_score as fs
from camid.forensics import rules as fr
from camid.sim import camera
from camid.sim import competition as sim
from camid.sim import external_pool as ep

# Seed 5 gives this tiny pool a 16:9-capable model, a model that stores portrait pixels
# rotated and models that tag portraits with Orientation (checked below).
POOL = sim.SimOptions(n_classes=3, train_per_class=1, test_per_class=1, width=128, height=96,
                      test_crop=32, seed=5, external_per_class=16, external_devices=3)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _truth(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / ep.POOL_TRUTH, keep_default_na=False, dtype=str)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    summary = ep.write_pool(out, POOL, workers=2)
    assert summary["skipped"] is False and summary["files"] == 3 * 16
    return out


@pytest.fixture(scope="module")
def filtered(pool: Path, tmp_path_factory) -> Path:
    kept = tmp_path_factory.mktemp("kept")
    rc = cli.main(["filter-external", str(pool / ep.POOL_DIR), "--rules", str(pool / ep.POOL_RULES),
                   "--out", str(kept), "--workers", "1", "--truth", str(pool / ep.POOL_TRUTH)])
    assert rc == 0
    return kept


def _joined(pool: Path, kept: Path) -> pd.DataFrame:
    report = pd.read_csv(kept / fe.DEFAULT_REPORT_NAME, dtype=str, keep_default_na=False)
    report["file"] = [f"{ep.POOL_DIR}/{Path(p).name}" for p in report["path"]]
    return _truth(pool).merge(report[["file", "decision", "reasons", "class"]], on="file", how="outer",
                              indicator=True)


def test_truth_matches_the_files_on_disk(pool: Path):
    truth = _truth(pool)
    on_disk = sorted(str(p.relative_to(pool)) for p in (pool / ep.POOL_DIR).iterdir())
    assert sorted(truth["file"]) == on_disk  # also: no temporary files left behind
    assert truth["file"].is_unique
    assert set(truth["kind"]) == set(ep.KIND_BY_NAME)  # every planted kind is present
    for row in truth[truth["kind"].isin(["clean", "resized", "duplicate_crop"])].itertuples():
        with Image.open(pool / row.file) as im:
            assert im.size == (int(row.width), int(row.height))
    for row in truth[truth["duplicate_of"] != ""].itertuples():
        assert row.duplicate_of in set(truth["file"]) and row.duplicate_of < row.file
    marker = json.loads((pool / ep.POOL_MARKER).read_text())
    assert marker["complete"] is True and marker["files"] == len(truth)


def test_kind_counts_follow_the_shares():
    counts = ep.kind_counts(400)
    assert sum(counts.values()) == 400
    assert 0.55 <= counts["clean"] / 400 <= 0.62
    assert counts["edited_software"] == 24 and counts["empty"] == 4
    tiny = ep.kind_counts(48)  # 4 files per reject kind: every kind at least once
    assert min(tiny.values()) >= 1 and tiny["clean"] >= 24
    assert ep.kind_counts(10) == {"clean": 10, **{k: 0 for k in ep.KIND_BY_NAME if k != "clean"}}


def test_pool_devices_are_never_a_or_b(pool: Path, tmp_path: Path, monkeypatch):
    truth = _truth(pool)
    devices = set(truth["true_device"]) - {""}
    assert devices and devices <= set(ep.pool_devices(POOL.external_devices)) == {"C", "D", "E"}
    assert not {cap.device for cap in ep.plan_pool(POOL)} & {"A", "B"}
    # Every sensor pattern the generator actually applies belongs to a pool device.
    seen: set[tuple[int, str]] = set()
    real_prnu = camera.prnu

    def recording_prnu(seed, class_index, device, *rest):
        seen.add((class_index, device))
        return real_prnu(seed, class_index, device, *rest)

    monkeypatch.setattr(camera, "prnu", recording_prnu)
    ep.write_pool(tmp_path / "p", POOL, workers=1)
    assert seen and {d for _, d in seen} <= {"C", "D", "E"}
    assert {c for c, _ in seen if c < ep.FOREIGN_BASE} == {0, 1, 2}
    # ...and those patterns are not device A's or B's (their own device codes).
    std = camera.make_device(0, "C", POOL.seed).prnu_std
    k = {d: real_prnu(POOL.seed, 0, d, 96, 128, std).ravel() for d in "ABC"}
    assert max(abs(np.corrcoef(k["C"], k[d])[0, 1]) for d in "AB") < 0.1
    assert camera.make_device(0, "C", POOL.seed) != camera.make_device(0, "A", POOL.seed)


def test_filter_verdicts_match_the_truth(pool: Path, filtered: Path):
    j = _joined(pool, filtered)
    assert (j["_merge"] == "both").all()
    wrong = j[j["decision"] != j["expected"]]
    assert wrong.empty, wrong[["file", "kind", "expected", "decision", "reasons"]].to_string()
    for row in j[j["expected"] == "reject"].itertuples():
        codes = {fr.reason_code(r) for r in row.reasons.split(";")}
        assert row.expected_reason in codes, (row.file, row.kind, row.reasons)
    clean = j[j["kind"] == "clean"]
    assert (clean["decision"] == "keep").all() and (clean["class"] == clean["claimed_class"]).all()
    liars = j[j["kind"] == "liar"]
    assert len(liars) and (liars["decision"] == "keep").all()
    assert (liars["class"] != liars["true_model"]).all()  # kept under the wrong label
    score = json.loads((filtered / fs.SCORE_NAME).read_text())
    assert score["precision"] == 1.0 and score["recall"] == 1.0 and score["as_expected"] == 1.0
    assert score["liars_kept"] == score["liars"] == len(liars)
    assert score["label_precision"] == round(1 - len(liars) / score["kept"], 4)
    reasons = pd.read_csv(filtered / fs.REASONS_NAME).set_index("expected")
    off_diagonal = sum(int(reasons.loc[e, g]) for e in reasons.index for g in reasons.columns if e != g)
    assert off_diagonal == 0


def test_bad_files_are_reported_not_fatal(pool: Path, filtered: Path):
    j = _joined(pool, filtered)
    bad = j[j["kind"].isin(["truncated", "empty", "not_image"])]
    assert set(bad["kind"]) == {"truncated", "empty", "not_image"}
    assert (bad["decision"] == "reject").all()
    assert bad["reasons"].str.startswith("unreadable").all(), bad["reasons"].tolist()
    assert (pool / bad[bad["kind"] == "empty"]["file"].iloc[0]).stat().st_size == 0


def test_rules_file_is_the_filters_format_and_accepts_both_orientations(pool: Path):
    rules = fr.load_rules(pool / ep.POOL_RULES)
    assert [r.name for r in rules.classes] == camera.class_names(POOL.n_classes)
    assert all(r.tables == "ijg" and r.min_quality for r in rules.classes)
    truth = _truth(pool)
    kept = truth[truth["expected"] == "keep"]
    w, h = kept["width"].astype(int), kept["height"].astype(int)
    assert (h > w).any(), "no portrait stored rotated"
    assert kept["orientation"].isin(["6", "8"]).any(), "no portrait tagged via Orientation"
    assert ((h == 72) | (w == 72)).any(), "no 16:9 frame"
    for row in kept.itertuples():  # EXIF as written matches what the truth says
        with Image.open(pool / row.file) as im:
            exif = im.getexif()
            assert (exif.get(0x010F), exif.get(0x0110), exif.get(0x0112)) == (
                row.exif_make, row.exif_model, int(row.orientation))
            assert exif.get(0x0132)  # DateTime


def test_pool_is_byte_deterministic(pool: Path, tmp_path: Path):
    ep.write_pool(tmp_path / "again", POOL, workers=1)
    assert _hashes(tmp_path / "again") == _hashes(pool)
    other = sim.SimOptions(**{**POOL.to_dict(), "external_per_class": 16, "external_devices": 3, "seed": 6})
    ep.write_pool(tmp_path / "other", other, workers=1)
    assert _hashes(tmp_path / "other") != _hashes(pool)


def test_editor_tables_are_not_ijg_but_high_quality():
    from camid.forensics.exif import estimate_quality, ijg_quality
    tables = dict(enumerate(ep.EDITOR_QTABLES))
    assert ijg_quality(tables) is None
    # at least the highest min_quality any simulated model can get
    assert estimate_quality(tables)[0] >= max(camera.JPEG_QUALITIES) - camera.JPEG_QUALITY_JITTER


def test_pool_identities_are_what_the_filter_can_tell():
    """The truth's verdicts rely on the filter's own matching: no foreign model string is a
    class's, every firmware string passes its class's Software patterns, every editor string
    is an editor to the filter. write_pool checks it with the rules it writes
    (``check_identities``), and refuses a pool where it fails."""
    from camid.forensics.exif import DEFAULT_EDITOR_PATTERNS, glob_match, normalise_model
    opts = sim.SimOptions(n_classes=13, width=128, height=96, test_crop=32)  # Kaggle names and Camera-11..13
    cameras = ep.pool_cameras(camera.make_models(opts.n_classes, opts.seed), opts)
    rules = ep.pool_rules(cameras, opts)
    ep.check_identities(cameras, rules)
    assert fr.parse_rules(fr.rules_mapping(rules)) == rules  # the file written is the rules checked
    near_miss = dataclasses.replace(cameras[1], models=("iPhone 6 Plus",))  # a foreign camera's model string
    with pytest.raises(sim.SimulateError, match="foreign camera model"):
        ep.check_identities(cameras, ep.pool_rules([cameras[0], near_miss, *cameras[2:]], opts))
    class_models = {normalise_model(m) for c in cameras for m in c.models}
    for _, model_name, _ in ep.FOREIGN_CAMERAS:
        assert normalise_model(model_name) not in class_models, model_name
    for cam in cameras:
        if cam.software_rules is not None:
            assert all(glob_match(s, cam.software_rules) for s in cam.firmware), cam.name
    assert all(glob_match(s, DEFAULT_EDITOR_PATTERNS) for s in ep.EDITOR_SOFTWARE)


def test_score_counts_filter_mistakes(pool: Path, filtered: Path):
    report = pd.read_csv(filtered / fe.DEFAULT_REPORT_NAME, dtype=str, keep_default_na=False)
    truth = fs.load_truth(pool / ep.POOL_TRUTH)
    by_name = {Path(p).name: i for i, p in enumerate(report["path"])}
    t = _truth(pool)
    clean = Path(t[t["kind"] == "clean"]["file"].iloc[0]).name
    resized = Path(t[t["kind"] == "resized"]["file"].iloc[0]).name
    tables = Path(t[t["kind"] == "resaved_tables"]["file"].iloc[0]).name
    report.loc[by_name[clean], ["decision", "reasons"]] = ["reject", "quality: 80 < 89"]
    report.loc[by_name[resized], ["decision", "reasons"]] = ["keep", ""]
    report.loc[by_name[tables], "reasons"] = "software: 'x' matches none of ['y']"
    result = fs.score(report.drop(index=by_name[Path(t["file"].iloc[-1]).name]), truth)
    m = result.summary
    expected_keep = int((t["expected"] == "keep").sum())
    last_keep = t["expected"].iloc[-1] == "keep"
    assert m["missing_from_report"] == 1 and m["scored"] == len(t) - 1
    assert m["false_reject"] == 1 and m["false_keep"] == 1
    assert m["true_keep"] == expected_keep - 1 - last_keep
    assert m["precision"] == round(m["true_keep"] / (m["true_keep"] + 1), 4)
    assert result.reasons.loc["keep", "quality"] == 1
    assert result.reasons.loc["shape", "keep"] == 1
    assert result.reasons.loc["tables", "software"] == 1


def test_truth_errors_are_one_line(pool: Path, tmp_path: Path, capsys):
    rc = cli.main(["filter-external", str(pool / ep.POOL_DIR), "--rules", str(pool / ep.POOL_RULES),
                   "--out", str(tmp_path / "k"), "--truth", str(tmp_path / "none.csv")])
    assert rc == 2 and "truth file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("file,kind\nx,clean\n")
    with pytest.raises(fs.TruthError, match="missing column"):
        fs.load_truth(bad)


SMALL = sim.SimOptions(n_classes=2, train_per_class=1, test_per_class=1, width=128, height=96,
                       test_crop=32, seed=3)


def test_simulate_writes_the_pool_without_touching_train_and_test(tmp_path: Path, capsys):
    plain, with_pool = tmp_path / "plain", tmp_path / "pool"
    sim.simulate(plain, SMALL, workers=1)
    opts = sim.SimOptions(**{**SMALL.to_dict(), "external_per_class": 5})
    summary = ep.simulate_with_pool(with_pool, opts, workers=1)
    assert summary["external"]["files"] == 10
    same = {k: v for k, v in _hashes(with_pool).items() if not k.startswith("external")}
    assert same == _hashes(plain)  # train/, test/, CSVs and simulate.json byte-identical
    assert {p.name for p in with_pool.iterdir()} >= {"external", ep.POOL_TRUTH, ep.POOL_RULES, ep.POOL_MARKER}
    # Re-run: both parts skipped, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in with_pool.rglob("*")}
    again = ep.simulate_with_pool(with_pool, opts, workers=1)
    assert again["skipped"] is True and again["external"]["skipped"] is True
    assert {p: p.stat().st_mtime_ns for p in with_pool.rglob("*")} == mtimes
    # A bigger pool: only the pool is regenerated (the competition options did not change).
    bigger = sim.SimOptions(**{**SMALL.to_dict(), "external_per_class": 7})
    train = with_pool / "train" / "HTC-1-M7" / "HTC-1-M7_0000.jpg"
    before = train.stat().st_mtime_ns
    assert ep.simulate_with_pool(with_pool, bigger, workers=1)["external"]["files"] == 14
    assert train.stat().st_mtime_ns == before
    assert len(list((with_pool / "external").iterdir())) == 14  # old pool removed, not mixed in


def test_cli_external_flag_and_config_key(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulate:\n  n_classes: 2\n  train_per_class: 1\n  test_per_class: 1\n  width: 128\n"
                   "  height: 96\n  test_crop: 32\n  seed: 3\n  external_per_class: 4\n  external_devices: 2\n")
    out = tmp_path / "o"
    assert cli.main(["simulate", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    truth = _truth(out)
    assert len(truth) == 8 and set(truth["true_device"]) - {""} <= {"C", "D"}
    assert cli.main(["simulate", str(out), "--config", str(cfg), "--external", "3", "--workers", "1"]) == 0
    assert len(_truth(out)) == 6
    assert json.loads((out / ep.POOL_MARKER).read_text())["options"]["external_per_class"] == 3
    assert cli.main(["simulate", str(tmp_path / "x"), "--config", str(cfg), "--external", "-1"]) == 2


@pytest.mark.parametrize(("key", "value"), [("external_per_class", -1), ("external_devices", 0),
                                            ("external_devices", 25)])
def test_config_refuses_impossible_external_keys(tmp_path: Path, key: str, value: int):
    from camid.config import load_config
    from camid.errors import ConfigError
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"simulate:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"simulate.{key}"):
        load_config(cfg)


def test_refuses_an_external_folder_it_did_not_write(tmp_path: Path):
    (tmp_path / "external").mkdir()
    (tmp_path / "external" / "mine.jpg").write_bytes(b"x")
    with pytest.raises(sim.SimulateError, match="not written by"):
        ep.write_pool(tmp_path, POOL, workers=1)
    assert (tmp_path / "external" / "mine.jpg").read_bytes() == b"x"


def test_make_filter_external_defaults_to_the_pool():
    repo = Path(__file__).parents[1]
    dry = subprocess.run(["make", "-n", "-C", str(repo), "filter-external", "DATA=/d"], capture_output=True,
                         text=True, check=True).stdout
    assert "filter-external /d/external --rules /d/external_rules.yaml" in dry
    assert "--out /d/external_kept --truth /d/external_truth.csv" in dry
    explicit = subprocess.run(["make", "-n", "-C", str(repo), "filter-external", "SRC=/s", "OUT=/o"],
                              capture_output=True, text=True, check=True).stdout
    assert "filter-external /s --rules configs/external_rules.yaml --out /o" in explicit
    assert "--truth" not in explicit
