"""`camid filter-external`: rules, robust reading, near-duplicates, report and CLI."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import piexif
import pytest
import yaml
from PIL import Image

from camid import cli
from camid.forensics import filter_analysis as analysis
from camid.forensics import filter_decision as decision
from camid.forensics import filter_external as fe
from camid.forensics import phash
from camid.forensics import rules as fr
from camid.forensics.exif import STD_CHROMINANCE, STD_LUMINANCE, scaled_table

REPO = Path(__file__).parents[1]
REAL = Path(__file__).parents[2] / "shared" / "data"
KAGGLE_CLASSES = ["HTC-1-M7", "iPhone-4s", "iPhone-6", "LG-Nexus-5x", "Motorola-Droid-Maxx",
                  "Motorola-Nexus-6", "Motorola-X", "Samsung-Galaxy-Note3", "Samsung-Galaxy-S4",
                  "Sony-NEX-7"]

RULES = {
    "min_side": 32,
    "defaults": {"min_quality": 90},
    "classes": [
        {"name": "Cam-A", "models": ["Alpha 1"], "software": ["AlphaOS*"], "shapes": [[320, 240]]},
        {"name": "Cam-B", "models": ["Beta"], "software": [], "shapes": [[256, 192]], "tables": "ijg"},
        {"name": "Cam-C", "models": ["Gamma"], "tables": "custom", "min_quality": 80},
    ],
}
# Not a scaled IJG table (one step off in a checkerboard), about quality 90.
CUSTOM_TABLES = [(scaled_table(STD_LUMINANCE, 90) + np.arange(64) % 2).tolist(),
                 scaled_table(STD_CHROMINANCE, 90).tolist()]


def scene(seed: int, w: int = 320, h: int = 240) -> Image.Image:
    """Smooth random colour field + fine noise: natural-image-like low frequencies."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def exif_bytes(model: str | None = "Alpha 1", software: str | None = "AlphaOS 2.1",
               make: str = "Maker") -> bytes:
    ifd = {piexif.ImageIFD.Make: make.encode()}
    if model is not None:
        ifd[piexif.ImageIFD.Model] = model.encode()
    if software is not None:
        ifd[piexif.ImageIFD.Software] = software.encode()
    return piexif.dump({"0th": ifd})


def make_jpeg(path: Path, w: int = 320, h: int = 240, seed: int = 0, quality: int | None = 95,
              mode: str = "RGB", exif: bytes | None = None, image: Image.Image | None = None,
              **exif_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = (image or scene(seed, w, h)).convert(mode)
    kw: dict[str, Any] = {"exif": exif if exif is not None else exif_bytes(**exif_kw)}
    if quality is not None:
        kw["quality"] = quality
    else:
        kw["qtables"] = CUSTOM_TABLES
    im.save(path, "JPEG", **kw)
    return path


def _broken_exif() -> bytes:
    body = bytearray(exif_bytes())
    body[14:] = bytes((7 * i + 200) % 256 for i in range(len(body) - 14))
    return bytes(body)


def _write_16bit(path: Path, fmt: str) -> Path:
    arr = (np.arange(240 * 320, dtype=np.uint32).reshape(240, 320) * 3 % 65535).astype(np.uint16)
    Image.fromarray(arr).save(path, fmt)  # mode I;16
    return path


def _truncated(path: Path) -> Path:
    make_jpeg(path, seed=11)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# name -> (builder(path), expected class, expected reason codes)
CASES = {
    "keep_a.jpg": (lambda p: make_jpeg(p), "Cam-A", set()),
    "keep_a_portrait.jpg": (lambda p: make_jpeg(p, 240, 320, seed=1, model="ALPHA1  "), "Cam-A", set()),
    "keep_b.jpg": (lambda p: make_jpeg(p, 256, 192, seed=2, model="Beta", software=None), "Cam-B", set()),
    "keep_c.jpg": (lambda p: make_jpeg(p, 300, 200, seed=3, quality=None, model="Gamma"), "Cam-C", set()),
    "model_unknown.jpg": (lambda p: make_jpeg(p, seed=4, model="Zeta 9"), "", {"model"}),
    "no_exif.jpg": (lambda p: make_jpeg(p, seed=5, exif=b""), "", {"model"}),
    "software_other.jpg": (lambda p: make_jpeg(p, seed=6, software="OtherOS 1"), "Cam-A", {"software"}),
    "software_not_empty.jpg": (lambda p: make_jpeg(p, 256, 192, seed=7, model="Beta", software="FW 1"),
                               "Cam-B", {"software"}),
    "editor.jpg": (lambda p: make_jpeg(p, seed=8, software="Adobe Photoshop CS6 (Windows)"),
                   "Cam-A", {"resave", "software"}),
    "shape.jpg": (lambda p: make_jpeg(p, 330, 240, seed=9), "Cam-A", {"shape"}),
    "quality.jpg": (lambda p: make_jpeg(p, seed=10, quality=80), "Cam-A", {"quality"}),
    "tables_not_ijg.jpg": (lambda p: make_jpeg(p, 256, 192, seed=12, quality=None, model="Beta",
                                               software=None), "Cam-B", {"tables"}),
    "tables_not_custom.jpg": (lambda p: make_jpeg(p, seed=13, model="Gamma"), "Cam-C", {"tables"}),
    "one_pixel.jpg": (lambda p: make_jpeg(p, 1, 1, seed=14), "Cam-A", {"too-small", "shape"}),
    "grayscale.jpg": (lambda p: make_jpeg(p, seed=15, mode="L"), "Cam-A", {"colour-mode"}),
    "cmyk.jpg": (lambda p: make_jpeg(p, seed=16, mode="CMYK"), "Cam-A", {"colour-mode", "resave"}),
    "broken_exif.jpg": (lambda p: make_jpeg(p, seed=17, exif=_broken_exif()), "", {"exif", "model"}),
    "sixteen_bit.png": (lambda p: _write_16bit(p, "PNG"), "", {"not-jpeg", "model"}),
    "sixteen_bit.tif": (lambda p: _write_16bit(p, "TIFF"), "", {"not-jpeg", "model"}),
    "zero_bytes.jpg": (lambda p: p.write_bytes(b""), "", {"unreadable"}),
    "text_file.jpg": (lambda p: p.write_text("not an image\n"), "", {"unreadable"}),
    "truncated.jpg": (_truncated, "Cam-A", {"unreadable"}),
    "Cam-B/wrong_model.jpg": (lambda p: make_jpeg(p, 256, 192, seed=18, software=None), "Cam-B", {"model"}),
}


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict[str, dict]:
    src = tmp_path_factory.mktemp("src")
    for name, (build, _, _) in CASES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        build(src / name)
    rules = fr.parse_rules(RULES)
    rows, counts = fe.analyse_all([str(src / name) for name in CASES], {}, rules, src)
    assert counts == {"reused": 0, "read": len(CASES), "decoded": 5}  # the 4 keeps + truncated
    decision.decide(rows, rules, src)
    return {name: row for name, row in zip(CASES, rows, strict=True)}


@pytest.mark.parametrize("name", list(CASES))
def test_rules_give_every_reason(judged, name):
    _, cls, codes = CASES[name]
    row = judged[name]
    got = {fr.reason_code(r) for r in row["reasons"].split(";") if r}
    assert (row["class"], got) == (cls, codes), row["reasons"]
    assert row["decision"] == ("keep" if not codes else "reject")


def test_reasons_are_specific(judged):
    assert judged["quality.jpg"]["reasons"] == "quality: 80 < 90"
    assert judged["shape.jpg"]["reasons"].startswith("shape: 330x240 is not a Cam-A size (320x240")
    assert "EXIF Software 'Adobe Photoshop CS6 (Windows)'" in judged["editor.jpg"]["reasons"]
    assert judged["editor.jpg"]["resave"] is True and judged["keep_a.jpg"]["resave"] is False
    assert judged["no_exif.jpg"]["reasons"] == "model: no EXIF model tag"
    assert "'Zeta 9' matches no class" in judged["model_unknown.jpg"]["reasons"]
    assert "is not a Cam-B model" in judged["Cam-B/wrong_model.jpg"]["reasons"]
    assert "empty file" in judged["zero_bytes.jpg"]["reasons"]
    assert "not a recognised image format" in judged["text_file.jpg"]["reasons"]
    assert "truncated" in judged["truncated.jpg"]["reasons"]
    assert judged["truncated.jpg"]["exif_model"] == "Alpha 1"  # header facts survive
    assert judged["sixteen_bit.png"]["mode"].startswith("I;16")
    # Only header-passing files are decoded: the rest need no pixels to be rejected.
    assert judged["keep_a.jpg"]["decoded"] and len(judged["keep_a.jpg"]["phash"].split()) == 8
    assert not judged["quality.jpg"]["decoded"] and judged["quality.jpg"]["phash"] == ""


def test_decode_all_hashes_and_checks_every_jpeg(tmp_path):
    tiny = make_jpeg(tmp_path / "tiny.jpg", 1, 1)
    trunc = _truncated(tmp_path / "trunc.jpg")
    make_jpeg(tmp_path / "x.jpg", model="Zeta")
    rules = fr.parse_rules(RULES)
    paths = [str(tiny), str(trunc), str(tmp_path / "x.jpg")]
    rows, counts = fe.analyse_all(paths, {}, rules, tmp_path, decode_all=True)
    assert counts["decoded"] == 3
    assert rows[0]["phash"] == ""  # a flat image is nobody's duplicate
    assert "truncated" in rows[1]["read_error"] and len(rows[2]["phash"].split()) == 8


def test_facts_recorded(judged):
    row = judged["keep_b.jpg"]
    assert (row["width"], row["height"], row["quality"], row["ijg_quality"]) == (256, 192, 95, 95)
    assert (row["exif_make"], row["exif_model"], row["exif_software"]) == ("Maker", "Beta", "")
    assert judged["keep_c.jpg"]["ijg_quality"] is None and judged["keep_c.jpg"]["quality"] == 90


# --------------------------------------------------------------------- rules file

def test_default_rules_cover_the_kaggle_classes():
    rules = fr.load_rules(REPO / "configs" / "external_rules.yaml")
    assert [r.name for r in rules.classes] == KAGGLE_CLASSES
    nexus = rules.by_name("LG-Nexus-5x")
    assert nexus.models == ("Nexus 5X",) and nexus.software == ("bullhead*", "HDR+*")  # seed 002
    assert nexus.shapes == ((4032, 3024),)
    assert rules.class_for_model("  nexus 5x ") is nexus
    assert rules.class_for_model("iPhone 6 Plus") is None
    assert all(r.min_quality == 93 and r.shapes for r in rules.classes)


@pytest.mark.parametrize("patch,message", [
    ({"colour": 1}, "unknown key"),
    ({"classes": [{"name": "X", "models": ["m"], "shape": [[1, 2]]}]}, "unknown key"),
    ({"defaults": {"name": "X"}}, "unknown key"),
    ({"classes": [{"name": "X"}]}, "`models` is required"),
    ({"classes": [{"name": "X", "models": []}]}, "must not be empty"),
    ({"classes": [{"name": "../X", "models": ["m"]}]}, "plain folder name"),
    ({"classes": [{"name": "X", "models": ["m"], "shapes": [[1, 2, 3]]}]}, "[width, height]"),
    ({"classes": [{"name": "X", "models": ["m"], "min_quality": 0}]}, "[1, 100]"),
    ({"classes": [{"name": "X", "models": ["m"], "tables": "jpeg"}]}, "tables"),
    ({"classes": [{"name": "X", "models": ["m"], "software": "a*"}]}, "list of strings"),
    ({"classes": [{"name": "X", "models": ["A b"]}, {"name": "Y", "models": ["ab"]}]}, "both"),
    ({"classes": [{"name": "X", "models": ["a"]}, {"name": "X", "models": ["b"]}]}, "twice"),
    ({"duplicate_max_distance": 8}, "[0, 7]"),
    ({"classes": []}, "non-empty"),
])
def test_rules_validation(patch, message):
    with pytest.raises(fr.RulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fr.parse_rules({**RULES, **patch})


def test_defaults_apply_and_classes_override():
    rules = fr.parse_rules(RULES)
    assert rules.by_name("Cam-A").min_quality == 90 and rules.by_name("Cam-C").min_quality == 80
    assert rules.by_name("Cam-C").software is None and rules.by_name("Cam-B").software == ()


# ------------------------------------------------------------------ near-duplicates

def _hashes(path: Path) -> list[int]:
    return phash.parse_hashes(fe.decode_file(str(path))["phash"])


def _distance(a: list[int], b: list[int]) -> int:
    return min((x ^ b[0]).bit_count() for x in a)


def test_phash_finds_resized_recompressed_rotated_copies_not_distinct_images(tmp_path):
    base = scene(100, 640, 480)
    ref = _hashes(make_jpeg(tmp_path / "base.jpg", image=base))
    copies = {
        "half_q70": base.resize((320, 240), Image.Resampling.BICUBIC),
        "double_q70": base.resize((1280, 960), Image.Resampling.BICUBIC),
        "rot90": base.transpose(Image.Transpose.ROTATE_90),
        "gamma": base.point(lambda v: int(255 * (v / 255) ** 0.8)),
    }
    for name, im in copies.items():
        got = _hashes(make_jpeg(tmp_path / f"{name}.jpg", image=im, quality=70))
        assert _distance(got, ref) <= 4, name
    for seed in range(101, 121):
        other = _hashes(make_jpeg(tmp_path / f"other{seed}.jpg", 640, 480, seed=seed))
        assert _distance(other, ref) > 12, seed


def test_hash_index_matches_brute_force():
    rng = np.random.default_rng(0)
    stored = [int(x) for x in rng.integers(0, 2**63, 3000, dtype=np.int64)]
    index = phash.HashIndex(6)
    for i, h in enumerate(stored):
        index.add(h, str(i))
    for k in range(300):
        target = stored[k * 7]
        flips = rng.choice(64, size=k % 9, replace=False)  # 0..8 bits away
        query = target ^ sum(1 << int(b) for b in flips)
        brute = [i for i, h in enumerate(stored) if (h ^ query).bit_count() <= 6]
        assert index.query(query) == brute


def test_duplicates_keep_the_good_copy_and_lose_to_training(tmp_path):
    src = tmp_path / "src"
    base = scene(200, 320, 240)
    make_jpeg(src / "a_copy_low_quality.jpg", image=base, quality=60)
    make_jpeg(src / "b_original.jpg", image=base)
    make_jpeg(src / "c_other.jpg", seed=201)
    make_jpeg(src / "d_copy_of_train.jpg", seed=202)
    train_file = make_jpeg(tmp_path / "data" / "train" / "Cam-A" / "t.jpg", image=scene(202, 640, 480))
    paths = sorted(str(p) for p in src.iterdir())
    rules = fr.parse_rules(RULES)
    rows, _ = fe.analyse_all(paths, {}, rules, src, decode_all=True)  # also hash the bad copy
    train = [(str(train_file), analysis.hash_file(str(train_file)))]
    assert decision.decide(rows, rules, src, train) == 2
    by = {Path(r["path"]).name: r for r in rows}
    assert by["b_original.jpg"]["decision"] == "keep" and by["c_other.jpg"]["decision"] == "keep"
    assert by["a_copy_low_quality.jpg"]["duplicate_of"] == str(src / "b_original.jpg")
    assert f"near-duplicate of {src / 'b_original.jpg'}" in by["a_copy_low_quality.jpg"]["reasons"]
    assert by["d_copy_of_train.jpg"]["reasons"] == f"near-duplicate of {train_file}"


# ------------------------------------------------------------------------- CLI

def _run(*argv: str) -> int:
    return cli.main(["filter-external", *map(str, argv)])


@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    make_jpeg(src / "a" / "keep1.jpg", seed=1)
    make_jpeg(src / "b" / "keep1.jpg", seed=2)  # same file name, other photo
    make_jpeg(src / "Cam-B" / "ok.jpg", 256, 192, seed=3, model="Beta", software=None)
    # a rotated, recompressed copy of a/keep1.jpg that passes every header check
    make_jpeg(src / "dup.jpg", image=scene(1).transpose(Image.Transpose.ROTATE_270), quality=91)
    make_jpeg(src / "low.jpg", seed=4, quality=50)
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("scrape log\n")
    (src / ".DS_Store").write_bytes(b"\0\0")  # hidden: not an input
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    return {"src": src, "rules": rules, "out": tmp_path / "out"}


def _report(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / fe.DEFAULT_REPORT_NAME, dtype=str, keep_default_na=False)


def test_cli_end_to_end_links_reports_and_resumes(tree, capsys):
    src, out = tree["src"], tree["out"]
    assert _run(src, "--rules", tree["rules"], "--out", out, "--workers", 2) == 0
    report = _report(out)
    inputs = sorted(str(p) for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert sorted(report["path"]) == inputs and len(report) == 7
    kept = report[report["decision"] == "keep"]
    assert sorted(Path(p).relative_to(src).as_posix() for p in kept["path"]) == [
        "Cam-B/ok.jpg", "a/keep1.jpg", "b/keep1.jpg"]
    for _, row in kept.iterrows():
        assert Path(row["dest"]).parent == out / row["class"]
        assert os.path.samefile(row["dest"], row["path"])  # hard link, not a copy
    assert len({Path(d).name for d in kept["dest"]}) == 3  # name clash resolved
    dup = report.set_index("path").loc[str(src / "dup.jpg")]
    assert dup["duplicate_of"] == str(src / "a" / "keep1.jpg")
    assert set(report.columns) >= {"path", "class", "decision", "reasons", "exif_make", "exif_model",
                                   "exif_software", "width", "height", "quality", "resave",
                                   "duplicate_of"}
    first = (out / fe.DEFAULT_REPORT_NAME).read_bytes()
    capsys.readouterr()

    assert _run(src, "--rules", tree["rules"], "--out", out, "--workers", 2) == 0
    assert "read 0 files, reused 7 unchanged" in capsys.readouterr().out
    assert (out / fe.DEFAULT_REPORT_NAME).read_bytes() == first

    # A changed file is read again; a stricter rule un-keeps files and removes their links.
    os.utime(src / "low.jpg", ns=(1, 1))
    strict = yaml.safe_load(tree["rules"].read_text())
    strict["classes"][0]["min_quality"] = 99  # Cam-A only
    tree["rules"].write_text(yaml.safe_dump(strict))
    assert _run(src, "--rules", tree["rules"], "--out", out, "--workers", 1) == 0
    text = capsys.readouterr().out
    assert "read 1 files, reused 6 unchanged" in text and "2 stale removed" in text
    assert "decoded 0 candidates" in text  # the kept files' pixels were read in the first run
    report = _report(out)
    assert list(report.loc[report["decision"] == "keep", "class"]) == ["Cam-B"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == ["Cam-B/ok.jpg"]


def test_cli_copy_train_duplicates_and_report_path(tree, tmp_path):
    src, out = tree["src"], tree["out"]
    train = make_jpeg(tmp_path / "data" / "train" / "Cam-A" / "t.jpg", image=scene(2, 640, 480))
    make_jpeg(tmp_path / "data" / "train" / "Cam-B" / "u.jpg", seed=77)
    report_path = tmp_path / "reports" / "ext.csv"
    assert _run(src, "--rules", tree["rules"], "--out", out, "--copy", "--workers", 1,
                "--train", tmp_path / "data", "--report", report_path) == 0
    report = pd.read_csv(report_path, dtype=str, keep_default_na=False).set_index("path")
    assert report.loc[str(src / "b" / "keep1.jpg"), "reasons"] == f"near-duplicate of {train}"
    dest = Path(report.loc[str(src / "a" / "keep1.jpg"), "dest"])
    assert dest.is_file() and not os.path.samefile(dest, src / "a" / "keep1.jpg")  # a copy
    assert (tmp_path / "reports" / "ext.train_hashes.csv").is_file()
    assert not (out / fe.DEFAULT_REPORT_NAME).exists()


def test_cli_rejects_bad_rules_with_one_line(tree, capsys):
    tree["rules"].write_text(yaml.safe_dump({**RULES, "colour": 1}))
    assert _run(tree["src"], "--rules", tree["rules"], "--out", tree["out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camid filter-external: error:") and "unknown key" in err
    assert "\n" not in err and len(err.splitlines()) == 1


def test_cli_missing_source_is_a_user_error(tmp_path, capsys):
    rules = tmp_path / "r.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    assert _run(tmp_path / "nope", "--rules", rules, "--out", tmp_path / "o") == 2
    assert "source folder not found" in capsys.readouterr().err


def test_checkpoint_writes_partial_report(tmp_path, monkeypatch):
    for i in range(3):
        make_jpeg(tmp_path / f"{i}.jpg", seed=i)
    monkeypatch.setattr(fe, "CHECKPOINT_SECONDS", -1.0)
    seen = []
    paths = sorted(str(p) for p in tmp_path.glob("*.jpg"))
    rows, counts = fe.analyse_all(paths, {}, fr.parse_rules(RULES), tmp_path,
                                  checkpoint=lambda done: seen.append(len(done)))
    assert seen == [1, 2, 3, 3, 3, 3]  # header pass, then pixel pass over the 3 candidates
    assert counts["decoded"] == 3 and [r["path"] for r in rows] == paths


def test_real_photos_through_default_rules(tmp_path):
    if not (REAL / "real_jpegs").is_dir():
        pytest.skip(f"shared real photos not found under {REAL}")
    out = tmp_path / "out"
    assert _run(REAL / "real_jpegs", "--out", out, "--workers", 2,
                "--rules", REPO / "configs" / "external_rules.yaml") == 0
    report = _report(out).set_index("path")
    assert len(report) == 25 and set(report["decision"]) == {"reject"}  # no Kaggle phone among them
    assert report["resave"].astype(int).sum() == 9
    tiny = report.loc[str(REAL / "real_jpegs" / "Issue_508.jpg")]
    assert "too-small: 1x1" in tiny["reasons"] and tiny["quality"] == "80"
    assert report["quality"].astype(int).between(56, 99).all()


def test_killed_run_resumes_from_its_checkpoint(tree, monkeypatch, capsys):
    src, out = tree["src"], tree["out"]
    real_decode, calls = fe.decode_file, []

    def dies_on_second(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run
        return real_decode(path)

    monkeypatch.setattr(fe, "CHECKPOINT_SECONDS", -1.0)
    monkeypatch.setattr(fe, "decode_file", dies_on_second)
    assert _run(src, "--rules", tree["rules"], "--out", out, "--workers", 1) == 130
    partial = _report(out)
    assert set(partial["decision"]) == {"pending"} and len(partial) == 7
    assert partial["decoded"].tolist().count("1") == 1

    monkeypatch.setattr(fe, "decode_file", real_decode)
    capsys.readouterr()
    assert _run(src, "--rules", tree["rules"], "--out", out, "--workers", 1) == 0
    text = capsys.readouterr().out
    # 4 files pass the header checks (3 keeps + the rotated copy); 1 was done before the kill
    assert "read 0 files, reused 7 unchanged" in text and "decoded 3 candidates" in text
    assert (_report(out)["decision"] == "keep").sum() == 3
