"""`camid prnu fingerprint` / `match` on real photos: Dresden Nikon D70 and D70s, two devices
each (../shared/data/dresden_prnu/, see its README). Fingerprints from each device's 10
flat-fields, every natural photo matched against all four, through the CLI as an examiner
would run it. Centre 512x512 crops keep this to seconds; the whole-frame figures are in
camid.bench.dresden_prnu and BENCHMARKS.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import cli
from camid.data.images import read_image

DRESDEN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dresden_prnu"
DEVICES = ("D70_0", "D70_1", "D70s_0", "D70s_1")
CROP = 512

pytestmark = pytest.mark.skipif(not (DRESDEN / "flatfield").is_dir() or not (DRESDEN / "natural").is_dir(),
                                reason=f"real Dresden photos not found at {DRESDEN}")


def device_of(path: str | Path) -> str:
    return "_".join(Path(path).name.split("_")[1:3])  # Nikon_D70s_1_22750.JPG -> D70s_1


@pytest.fixture(scope="session")
def dresden_prints(tmp_path_factory) -> dict[str, Path]:
    """One fingerprint per device from its flat-fields, built once per test session."""
    out = tmp_path_factory.mktemp("dresden_prints")
    prints = {}
    for dev in DEVICES:
        flats = sorted(str(p) for p in (DRESDEN / "flatfield").glob(f"Nikon_{dev}_*.JPG"))
        assert len(flats) == 10, dev
        prints[dev] = out / f"{dev}.npz"
        assert cli.main(["prnu", "fingerprint", *flats, "--crop", str(CROP), "-o", str(prints[dev]),
                         "--workers", "2"]) == 0
    return prints


@pytest.fixture(scope="session")
def dresden_scores(dresden_prints, tmp_path_factory) -> pd.DataFrame:
    """Every natural photo against every fingerprint: one row per pair."""
    out = tmp_path_factory.mktemp("dresden_match")
    tables = []
    for dev, fp in dresden_prints.items():
        csv = out / f"{dev}.csv"
        assert cli.main(["prnu", "match", str(fp), str(DRESDEN / "natural"), "--out", str(csv),
                         "--workers", "2"]) == 0
        tables.append(pd.read_csv(csv).assign(fingerprint=dev))
    scores = pd.concat(tables, ignore_index=True)
    scores["query_device"] = scores["file"].map(device_of)
    return scores


def test_right_device_ranks_first_and_no_other_device_passes_60(dresden_scores, capsys):
    s = dresden_scores
    assert len(s) == 14 * 4 and (s["error"].isna()).all()
    best = s.loc[s.groupby("file")["pce"].idxmax()]
    right = int((best["fingerprint"] == best["query_device"]).sum())
    same = s["fingerprint"] == s["query_device"]
    with capsys.disabled():  # the figures behind the assertions (pytest -s shows them)
        print(f"\nDresden {CROP}px: right device first for {right}/14 natural photos; same-device PCE "
              f"{np.round(np.sort(s.loc[same, 'pce'].to_numpy()), 1).tolist()}; max other-device PCE "
              f"{s.loc[~same, 'pce'].max():.1f}")
    assert right >= 12  # measured 14/14
    assert (s.loc[~same, "pce"] < 60).all() and (s.loc[~same, "decision"] == "no match").all()
    # The decision is not vacuous: some same-device photos pass even at 512 px (measured 5 of 14).
    assert (s.loc[same, "decision"] == "match").sum() >= 3


def test_search_finds_a_crop_of_a_real_photo_at_its_position(dresden_prints, tmp_path):
    from camid.forensics.prnu_tools import load_fingerprint
    photo = DRESDEN / "natural" / "Nikon_D70s_0_21853.JPG"
    y, x, _, _ = load_fingerprint(dresden_prints["D70s_0"]).region
    dy, dx = 64, 33
    crop = read_image(photo)[y + dy:y + dy + 384, x + dx:x + dx + 384]
    query = tmp_path / "cropped.png"
    Image.fromarray(crop).save(query)  # lossless: the crop is the only change
    rows = []
    for dev in ("D70s_0", "D70_0"):
        csv = tmp_path / f"{dev}.csv"
        assert cli.main(["prnu", "match", str(dresden_prints[dev]), str(query), "--search", "--out", str(csv),
                         "--workers", "1"]) == 0
        rows.append(pd.read_csv(csv).iloc[0])
    own, other = rows
    assert (own["shift_y"], own["shift_x"], own["decision"]) == (y + dy, x + dx, "match")
    assert other["decision"] == "no match"


def test_a_real_photo_rotated_for_display_is_still_matched(dresden_prints, tmp_path):
    """What a viewer does with EXIF orientation 6: pixels turned 90 degrees clockwise."""
    photo = DRESDEN / "natural" / "Nikon_D70s_1_22824.JPG"
    turned = tmp_path / "portrait.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(read_image(photo), -1))).save(turned)
    csv = tmp_path / "m.csv"
    assert cli.main(["prnu", "match", str(dresden_prints["D70s_1"]), str(photo), str(turned), "--out", str(csv),
                     "--workers", "2"]) == 0
    rows = pd.read_csv(csv)
    assert rows["rotation"].tolist() == [0, 90] and (rows["decision"] == "match").all()
    assert rows["pce"].iloc[1] == pytest.approx(rows["pce"].iloc[0])
