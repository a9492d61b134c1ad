"""JPEG quality (ImageMagick %Q), IJG table detection, EXIF tags and re-save evidence."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image

from camid.forensics.exif import (
    STD_CHROMINANCE,
    STD_LUMINANCE,
    clean_tag,
    estimate_quality,
    glob_match,
    ijg_quality,
    imagemagick_quality,
    inspect_image,
    normalise_model,
    read_exif_tags,
    resave_evidence,
    scaled_table,
    xmp_creator_tool,
)

REAL = Path(__file__).parents[2] / "shared" / "data"
EDITED = {"Canon_EOS_7D.jpg", "Canon_EOS_D60.jpg", "Canon_IXUS_400.jpg",
          "FujiFilm_FinePixS1Pro__1_.jpg", "Issue_508.jpg", "Issue_600__2_.jpg", "Issue_609.jpg",
          "Nikon_D5000.jpg", "Photoshop__3_.jpg"}


def _encode(mode: str, quality: int, subsampling: int = 2, **kw) -> Image.Image:
    rng = np.random.default_rng(quality)
    arr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=quality, subsampling=subsampling, **kw)
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("mode,subsampling", [("RGB", 2), ("RGB", 0), ("L", 2)],
                         ids=["rgb-420", "rgb-444", "gray"])
def test_quality_equals_pillow_quality_1_to_100(mode, subsampling):
    wrong = []
    for q in range(1, 101):
        im = _encode(mode, q, subsampling)
        assert len(im.quantization) == (1 if mode == "L" else 2)
        got = (imagemagick_quality(im.quantization), estimate_quality(im.quantization)[1],
               ijg_quality(im.quantization))
        if got != (q, True, q):
            wrong.append((q, got))
    assert wrong == []


def test_scaled_table_matches_libjpeg_written_tables():
    im = _encode("RGB", 75)
    assert list(im.quantization[0]) == scaled_table(STD_LUMINANCE, 75).tolist()
    assert list(im.quantization[1]) == scaled_table(STD_CHROMINANCE, 75).tolist()
    # quality 50 is the unscaled Annex K table; 100 is all ones
    assert scaled_table(STD_LUMINANCE, 50).tolist() == STD_LUMINANCE.tolist()
    assert set(scaled_table(STD_CHROMINANCE, 100).tolist()) == {1}


def test_custom_tables_are_not_ijg_but_get_imagemagick_estimate():
    custom = [scaled_table(STD_LUMINANCE, 90) + np.arange(64) % 2, scaled_table(STD_CHROMINANCE, 90)]
    buf = io.BytesIO()  # no quality=: Pillow would scale the given tables by it
    Image.new("RGB", (16, 16), (200, 10, 90)).save(buf, "JPEG", qtables=[t.tolist() for t in custom])
    buf.seek(0)
    im = Image.open(buf)
    assert [list(t) for t in im.quantization.values()] == [t.tolist() for t in custom]
    assert ijg_quality(im.quantization) is None
    quality, exact = estimate_quality(im.quantization)
    assert quality == 90 and not exact  # ImageMagick's "approximate" branch (i >= 50)


def test_undefined_quality_prints_92_like_imagemagick():
    # Low hash but large sum: no tabulated quality fits, and below 51 ImageMagick gives up.
    lum = np.full(64, 255)
    lum[2] = lum[53] = 1
    tables = {0: lum.tolist(), 1: [1] + [255] * 62 + [1]}
    assert estimate_quality(tables) == (None, False)
    assert imagemagick_quality(tables) == 92
    assert estimate_quality({1: [1] * 64}) == (None, False)  # no slot-0 table at all
    assert estimate_quality({0: [1] * 64}) == (100, True)


def _real_rows() -> list[dict[str, str]]:
    if not (REAL / "real_jpegs.csv").is_file() or not (REAL / "real_jpegs").is_dir():
        pytest.skip(f"shared real photos not found under {REAL} (../shared/data beside the repo)")
    with open(REAL / "real_jpegs.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_real_photos_match_imagemagick_quality_size_and_tags():
    rows = _real_rows()
    mismatches = []
    for row in rows:
        with Image.open(REAL / "real_jpegs" / row["file"]) as im:
            facts = inspect_image(im)
            ours = (imagemagick_quality(im.quantization), facts.width, facts.height,
                    facts.exif.model, facts.exif.software)
        ref = (int(row["imagemagick_quality"]), int(row["width"]), int(row["height"]),
               row["exif_model"], row["exif_software"])
        if ours != ref:
            mismatches.append((row["file"], ours, ref))
    assert len(rows) == 25
    assert mismatches == [], f"{25 - len(mismatches)}/25 agree with ImageMagick"


def test_real_photos_resave_evidence_flags_exactly_the_edited_ones():
    rows = _real_rows()
    flagged = set()
    for row in rows:
        with Image.open(REAL / "real_jpegs" / row["file"]) as im:
            facts = inspect_image(im)
            assert facts.exif.error == ""
            if facts.resave:
                flagged.add(row["file"])
    assert flagged == EDITED


def test_real_camera_originals_mostly_use_custom_tables():
    # Why non-IJG tables are not re-save evidence: cameras write their own tables,
    # while GIMP / paint.net re-saves carry exact IJG tables.
    rows = _real_rows()
    ijg = {}
    for row in rows:
        with Image.open(REAL / "real_jpegs" / row["file"]) as im:
            ijg[row["file"]] = ijg_quality(im.quantization)
    originals = [f for f in ijg if f not in EDITED]
    assert sum(ijg[f] is None for f in originals) >= len(originals) - 3
    assert ijg["Issue_600__2_.jpg"] == 94 and ijg["Issue_609.jpg"] == 90  # GIMP
    assert ijg["Issue_508.jpg"] == 80  # paint.net, and 1x1 pixels


def _with_exif(exif: bytes) -> Image.Image:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, "JPEG", quality=95, exif=exif)
    buf.seek(0)
    return Image.open(buf)


def test_read_exif_tags_from_piexif():
    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: b"LGE", piexif.ImageIFD.Model: b"Nexus 5X ",
                                piexif.ImageIFD.Software: b"HDR+ 1.0.199571065z"}})
    tags = read_exif_tags(_with_exif(exif))
    assert (tags.make, tags.model, tags.software, tags.error) == (
        "LGE", "Nexus 5X ", "HDR+ 1.0.199571065z", "")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")  # Pillow's own warning while opening
@pytest.mark.parametrize("damage", ["header", "ifd-offset", "garbage"])
def test_broken_exif_is_reported(damage):
    good = piexif.dump({"0th": {piexif.ImageIFD.Model: b"Nexus 5X"}})
    body = bytearray(good)
    if damage == "header":
        body[6:8] = b"XX"
    elif damage == "ifd-offset":
        body[10:14] = b"\xff\xff\xff\x7f"
    else:
        body[14:] = bytes((7 * i + 200) % 256 for i in range(len(body) - 14))  # valid header, junk IFD
    tags = read_exif_tags(_with_exif(bytes(body)))
    assert tags.error and tags.model == ""


def test_no_exif_is_not_an_error():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    buf.seek(0)
    assert read_exif_tags(Image.open(buf)).error == ""


def test_xmp_creator_tool_attribute_and_element_forms():
    for xmp in (b'<rdf:Description xmp:CreatorTool="Adobe Photoshop Lightroom 6.0"/>',
                b"<xmp:CreatorTool>Adobe Photoshop Lightroom 6.0</xmp:CreatorTool>"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG", xmp=xmp)
        buf.seek(0)
        assert xmp_creator_tool(Image.open(buf)) == "Adobe Photoshop Lightroom 6.0"


@pytest.mark.parametrize("software", [
    "Adobe Photoshop Lightroom", "Adobe Photoshop 7.0", "ACD Systems Digital Imaging",
    "paint.net 4.2.13", "GIMP 2.10.32", "Adobe Bridge CS5", "Adobe Photoshop CS6 (Windows)",
    "Snapseed 2.0", "Picasa"])
def test_editor_software_is_resave_evidence(software):
    assert resave_evidence(software, "", False) == [f"EXIF Software '{software}'"]


@pytest.mark.parametrize("software", [
    "", "4.1", "1.01                 ", "Digital Camera DX-10 Ver1.00", "Ver 1.12", "V100-02",
    "E995v1.6", "*ist D      Ver 1.10   ", "fw 05.15 prm 07.53 ", "HDR+ 1.0.199571065z",
    "bullhead-user 8.1.0 OPM7.181205.001 5080180 release-keys", "NEX-7 v1.03"])
def test_camera_software_is_not_resave_evidence(software):
    assert resave_evidence(software, "", False) == []
    assert resave_evidence(software, "", True) == ["Adobe APP14 marker"]


def test_tag_helpers():
    assert clean_tag(b"EX-Z3  \x00\x00") == "EX-Z3  "
    assert clean_tag("a\nb") == "a b" and clean_tag(None) == ""
    assert normalise_model(" Nexus 5X ") == normalise_model("NEXUS5x")
    assert normalise_model("iPhone 6") != normalise_model("iPhone 6 Plus")
    assert glob_match("  HDR+ 1.0 ", ["bullhead*", "hdr+*"]) == "hdr+*"
    assert glob_match("", [""]) == "" and glob_match("x", []) is None


def test_tiff_tags_are_read_from_its_first_directory(tmp_path):
    from PIL import TiffImagePlugin

    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[0x010F], ifd[0x0110], ifd[0x0131] = "NIKON", "E995", "GIMP 2.10"
    Image.new("RGB", (8, 8)).save(tmp_path / "a.tif", tiffinfo=ifd)
    Image.new("RGB", (8, 8)).save(tmp_path / "b.tif")
    with Image.open(tmp_path / "a.tif") as im:
        tags = read_exif_tags(im)
    assert (tags.make, tags.model, tags.software, tags.error) == ("NIKON", "E995", "GIMP 2.10", "")
    with Image.open(tmp_path / "b.tif") as im:
        assert read_exif_tags(im) == read_exif_tags(im).__class__()
