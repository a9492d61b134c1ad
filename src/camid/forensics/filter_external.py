"""The external-data filter (``camid filter-external``): keep only untouched camera originals of the known classes.

The winners scraped ~80k photos (Flickr, Yandex.Fotki, Wikimedia) and kept those whose
EXIF model, size, JPEG quality and software tags say "straight out of the phone"
(docs/competition.md, "External data"). This does that for every file under SRC:

1. read each file's header (EXIF, size, quantisation tables: ``camid.forensics.exif``), in parallel;
2. judge it against the rules (``configs/external_rules.yaml``; every failed check is a
   reason); files that pass are decoded (entropy-decoded in full at 1/8 scale, which
   catches truncation) and perceptually hashed -- the others need no pixel reads;
3. drop near-duplicates of training images and of earlier kept files;
4. hard-link (or copy) kept files to ``OUT/<class>/`` and write one report row per file.

Re-running with the same report reuses the analysis of files whose size and mtime are
unchanged, so a killed run or a rules change costs only the new work. Decisions are
always recomputed from the cached facts, so editing the rules needs no re-reading.
The report is the only state: ``dest`` says which outputs a run placed, so a later
run can remove those that are no longer kept.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from ..data.images import open_checked
from ..data.layout import TRAIN_DIR, scan_train
from ..errors import ImageReadError, RulesError, UsageError
from ..util.io import remove_stale_temps, temp_prefix, write_csv
from ..util.log import stage_log
from ..util.pool import parallel_map
from .exif import (
    DEFAULT_EDITOR_PATTERNS,
    glob_match,
    inspect_image,
    is_jpeg,
    normalise_model,
    resave_evidence,
)

STAGE = "filter-external"
# Bump when analyse_file/decode_file output changes, so resumed runs re-read every file.
ANALYZER_VERSION = "1"
DEFAULT_REPORT_NAME = "filter_report.csv"
CHECKPOINT_SECONDS = 60.0

ANALYSIS_COLUMNS = [
    "path", "size", "mtime_ns", "analyzer", "read_error", "format", "mode", "width",
    "height", "exif_make", "exif_model", "exif_software", "exif_error", "creator_tool",
    "adobe_app14", "quality", "quality_exact", "ijg_quality", "decoded", "phash"]
REPORT_COLUMNS = [
    "path", "class", "decision", "reasons", "exif_make", "exif_model", "exif_software",
    "width", "height", "quality", "resave", "resave_evidence", "duplicate_of", "dest",
    "format", "mode", "ijg_quality", "quality_exact", "exif_error", "creator_tool",
    "adobe_app14", "read_error", "decoded", "phash", "size", "mtime_ns", "analyzer"]
_INT_COLUMNS = ("size", "mtime_ns", "width", "height", "quality", "ijg_quality")
_BOOL_COLUMNS = ("adobe_app14", "quality_exact", "resave", "decoded")


# ----------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class ClassRule:
    name: str
    models: tuple[str, ...]
    software: tuple[str, ...] | None = None  # None: any; (): must be empty
    shapes: tuple[tuple[int, int], ...] | None = None  # None: any size
    min_quality: int | None = None
    tables: str = "any"  # any | ijg | custom


@dataclass(frozen=True)
class Rules:
    classes: tuple[ClassRule, ...]
    min_side: int = 64
    reject_resaved: bool = True
    editors: tuple[str, ...] = DEFAULT_EDITOR_PATTERNS
    duplicate_max_distance: int = 6
    _by_model: dict[str, ClassRule] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for rule in self.classes:
            for model in rule.models:
                self._by_model[normalise_model(model)] = rule

    def class_for_model(self, model: str) -> ClassRule | None:
        return self._by_model.get(normalise_model(model)) if model.strip() else None

    def by_name(self, name: str) -> ClassRule | None:
        return next((r for r in self.classes if r.name == name), None)


_TOP_KEYS = {"classes", "defaults", "min_side", "reject_resaved", "editors",
             "duplicate_max_distance"}
_CLASS_KEYS = {"name", "models", "software", "shapes", "min_quality", "tables"}
_DEFAULT_KEYS = _CLASS_KEYS - {"name", "models"}
_TABLE_KINDS = ("any", "ijg", "custom")


def _check_keys(obj: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(obj, dict):
        raise RulesError(f"{where}: expected a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return obj


def _str_list(value: Any, where: str, allow_empty: bool = True) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}: expected a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise RulesError(f"{where}: must not be empty")
    return tuple(value)


def _int_in(value: Any, lo: int, hi: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RulesError(f"{where}: expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _shapes(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise RulesError(f"{where}: expected a non-empty list of [width, height], got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise RulesError(f"{where}: each shape must be [width, height], got {item!r}")
        out.append((_int_in(item[0], 1, 100_000, where), _int_in(item[1], 1, 100_000, where)))
    return tuple(out)


def _class_fields(obj: dict, where: str) -> dict:
    """Validated optional per-class fields (shared by `defaults` and each class)."""
    out: dict[str, Any] = {}
    if "software" in obj:
        out["software"] = None if obj["software"] is None else _str_list(obj["software"], f"{where}.software")
    if "shapes" in obj:
        out["shapes"] = None if obj["shapes"] is None else _shapes(obj["shapes"], f"{where}.shapes")
    if "min_quality" in obj:
        out["min_quality"] = (None if obj["min_quality"] is None
                              else _int_in(obj["min_quality"], 1, 100, f"{where}.min_quality"))
    if "tables" in obj:
        if obj["tables"] not in _TABLE_KINDS:
            raise RulesError(f"{where}.tables: expected one of {_TABLE_KINDS}, got {obj['tables']!r}")
        out["tables"] = obj["tables"]
    return out


def _class_rule(obj: Any, defaults: dict, index: int) -> ClassRule:
    where = f"classes[{index}]"
    obj = _check_keys(obj, _CLASS_KEYS, where)
    name = obj.get("name")
    # The name becomes a folder under OUT: keep it a plain, visible directory name.
    if not isinstance(name, str) or not name.strip() or name.startswith(".") or "/" in name or "\\" in name:
        raise RulesError(f"{where}.name: expected a plain folder name, got {name!r}")
    if "models" not in obj:
        raise RulesError(f"{where} ({name}): `models` is required")
    models = _str_list(obj["models"], f"{where}.models", allow_empty=False)
    return ClassRule(name=name, models=models, **{**defaults, **_class_fields(obj, where)})


def parse_rules(obj: Any, source: str = "rules") -> Rules:
    """Validate a rules mapping (as loaded from YAML); unknown keys are errors."""
    obj = _check_keys(obj, _TOP_KEYS, source)
    defaults = _class_fields(_check_keys(obj.get("defaults") or {}, _DEFAULT_KEYS,
                                         f"{source}: defaults"), f"{source}: defaults")
    raw = obj.get("classes")
    if not isinstance(raw, list) or not raw:
        raise RulesError(f"{source}: `classes` must be a non-empty list")
    classes = tuple(_class_rule(item, defaults, i) for i, item in enumerate(raw))
    _check_unique(classes, source)
    kwargs: dict[str, Any] = {}
    if "min_side" in obj:
        kwargs["min_side"] = _int_in(obj["min_side"], 1, 100_000, f"{source}: min_side")
    if "reject_resaved" in obj:
        if not isinstance(obj["reject_resaved"], bool):
            raise RulesError(f"{source}: reject_resaved must be true or false")
        kwargs["reject_resaved"] = obj["reject_resaved"]
    if "editors" in obj:
        kwargs["editors"] = _str_list(obj["editors"], f"{source}: editors")
    if "duplicate_max_distance" in obj:
        # The hash index is exact only up to 7 bits (4 chunks of 16, one flip each).
        kwargs["duplicate_max_distance"] = _int_in(obj["duplicate_max_distance"], 0, 7,
                                                   f"{source}: duplicate_max_distance")
    return Rules(classes=classes, **kwargs)


def _check_unique(classes: Sequence[ClassRule], source: str) -> None:
    names = Counter(r.name for r in classes)
    dup = sorted(n for n, c in names.items() if c > 1)
    if dup:
        raise RulesError(f"{source}: class names listed twice: {dup}")
    owner: dict[str, str] = {}
    for rule in classes:
        for model in rule.models:
            key = normalise_model(model)
            if key in owner and owner[key] != rule.name:
                raise RulesError(f"{source}: model {model!r} belongs to both "
                                 f"{owner[key]} and {rule.name}")
            owner[key] = rule.name


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    if not path.is_file():
        raise RulesError(f"rules file not found: {path}")
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc
    return parse_rules(obj, str(path))


# ------------------------------------------------------------------ perceptual hash

def _dct_rows(n: int = 32, keep: int = 8) -> np.ndarray:
    """First ``keep`` rows of the orthonormal DCT-II matrix (scipy's dct norm="ortho")."""
    k, x = np.arange(keep)[:, None], np.arange(n)[None, :]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    basis[0] /= np.sqrt(2.0)
    return basis


_DCT8 = _dct_rows()


def _hash_bits(gray32: np.ndarray) -> int:
    """pHash: 8x8 lowest DCT frequencies of a 32x32 grey image, thresholded at their median."""
    block = (_DCT8 @ gray32 @ _DCT8.T).ravel()
    bits = block > np.median(block[1:])  # DC excluded from the median: it only shifts brightness
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash_variants(im: Image.Image) -> list[int]:
    """64-bit pHash of the image under the 8 rotations/flips (identity first); [] if flat.

    Comparing every variant of a new file with the identity hash of the kept ones finds
    copies that were rotated by an uploader as well as resized or recompressed ones.
    """
    gray = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    if gray.std() < 1.0:  # flat (or 1x1) images all hash alike: no evidence of duplication
        return []
    out = []
    for k in range(4):
        rotated = np.rot90(gray, k)
        out += [_hash_bits(rotated), _hash_bits(rotated[:, ::-1])]
    return out


def format_hashes(hashes: Sequence[int]) -> str:
    return " ".join(f"{h:016x}" for h in hashes)


def parse_hashes(text: str) -> list[int]:
    return [int(h, 16) for h in text.split()] if text else []


class HashIndex:
    """Find stored 64-bit hashes within a Hamming distance (<= 7) of a query.

    Pigeonhole: split the 64 bits into 4 chunks of 16; two hashes within distance 7
    agree on some chunk up to 1 bit, so each query probes 4 x 17 buckets instead of
    comparing against all N stored hashes (the winners' 80k photos).
    """

    def __init__(self, max_distance: int):
        if not 0 <= max_distance <= 7:
            raise ValueError("HashIndex supports max_distance 0..7")
        self.max_distance = max_distance
        self._flips = [0] + ([1 << b for b in range(16)] if max_distance >= 4 else [])
        self._buckets: list[dict[int, list[int]]] = [{} for _ in range(4)]
        self.hashes: list[int] = []
        self.keys: list[str] = []

    def add(self, h: int, key: str) -> None:
        idx = len(self.hashes)
        self.hashes.append(h)
        self.keys.append(key)
        for k in range(4):
            self._buckets[k].setdefault((h >> (16 * k)) & 0xFFFF, []).append(idx)

    def query(self, h: int) -> list[int]:
        """Indices (insertion order) of stored hashes within ``max_distance`` of ``h``."""
        found: set[int] = set()
        for k in range(4):
            chunk = (h >> (16 * k)) & 0xFFFF
            for flip in self._flips:
                found.update(self._buckets[k].get(chunk ^ flip, ()))
        return sorted(i for i in found if (self.hashes[i] ^ h).bit_count() <= self.max_distance)

    def first_match(self, variants: Iterable[int]) -> int | None:
        hits = [i for h in variants for i in self.query(h)]
        return min(hits) if hits else None


# ---------------------------------------------------------------------- analysis

def _decode_for_hash(im: Image.Image) -> list[int]:
    """Decode every scan (DCT-scaled to >= 64 px, so a 24 MP photo costs a fraction of a
    full decode) -- this is what detects truncated data -- and hash the result."""
    if is_jpeg(im):
        im.draft("L", (64, 64))
    im.load()
    return phash_variants(im)


def _reason(exc: ImageReadError) -> str:
    return exc.reason[:300]  # report cells stay readable whatever the decoder said


def _fill_facts(row: dict[str, Any], im: Image.Image) -> None:
    facts = inspect_image(im)
    row.update(format=facts.format, mode=facts.mode, width=facts.width, height=facts.height,
               exif_make=facts.exif.make, exif_model=facts.exif.model,
               exif_software=facts.exif.software, exif_error=facts.exif.error,
               creator_tool=facts.creator_tool, adobe_app14="adobe" in im.info,
               quality=facts.quality, quality_exact=facts.quality_exact,
               ijg_quality=facts.ijg_quality)


def analyse_file(path: str) -> dict[str, Any]:
    """Rules-independent header facts of one file (a few kB read); never raises.

    A file that cannot be opened gets ``read_error`` and no format.
    """
    row: dict[str, Any] = {c: "" for c in ANALYSIS_COLUMNS}
    row.update(path=path, analyzer=ANALYZER_VERSION, decoded=False)
    try:
        st = os.stat(path)
    except OSError as exc:
        row["read_error"] = f"cannot stat: {exc.strerror}"
        return row
    row.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        row["read_error"] = "empty file (0 bytes)"
        return row
    try:
        with open_checked(path) as im:
            _fill_facts(row, im)
    except ImageReadError as exc:
        row["read_error"] = _reason(exc)
    return row


def decode_file(path: str) -> dict[str, Any]:
    """Pixel pass of one JPEG: ``read_error`` (truncated/corrupt data) and its pHash."""
    try:
        with open_checked(path) as im:
            return {"phash": format_hashes(_decode_for_hash(im)), "read_error": "", "decoded": True}
    except ImageReadError as exc:
        return {"phash": "", "read_error": _reason(exc), "decoded": True}


def hash_file(path: str) -> str:
    """Space-separated pHash variants of any image ("" when unreadable): training images."""
    try:
        with open_checked(path) as im:
            return format_hashes(_decode_for_hash(im))
    except ImageReadError:  # an unreadable training image simply cannot be a duplicate source
        return ""


# ----------------------------------------------------------------------- decision

def reason_code(reason: str) -> str:
    """The code of a report reason (``"quality: 80 < 89"`` -> ``"quality"``), as the log counts them."""
    return reason.split(":", 1)[0].split(" of ", 1)[0]


def _file_reasons(row: dict[str, Any], rules: Rules) -> list[str]:
    """Reasons that do not depend on the class (the header was readable)."""
    reasons = []
    if row["read_error"]:
        reasons.append(f"unreadable: {row['read_error']}")
    if row["format"] not in ("JPEG", "MPO"):
        reasons.append(f"not-jpeg: {row['format']} image (mode {row['mode']})")
    elif row["mode"] != "RGB":
        kind = {"L": "grayscale", "CMYK": "CMYK"}.get(row["mode"], row["mode"])
        reasons.append(f"colour-mode: {kind} JPEG (cameras write YCbCr colour)")
    if min(int(row["width"]), int(row["height"])) < rules.min_side:
        reasons.append(f"too-small: {row['width']}x{row['height']} (min side {rules.min_side})")
    if row["exif_error"]:
        reasons.append(f"exif: {row['exif_error']}")
    if rules.reject_resaved and row["resave_evidence"]:
        reasons.append(f"resave: {row['resave_evidence']}")
    return reasons


def _model_reason(model: str, rule: ClassRule | None, folder_rule: ClassRule | None) -> str | None:
    shown = f"EXIF model '{model.strip()}'" if model.strip() else "no EXIF model tag"
    if folder_rule is None:
        if rule:
            return None
        return f"model: {shown} matches no class" if model.strip() else f"model: {shown}"
    if rule is folder_rule:
        return None
    return f"model: {shown} is not a {folder_rule.name} model (expected {', '.join(folder_rule.models)})"


def _software_reasons(software: str, rule: ClassRule) -> list[str]:
    software = software.strip()
    if rule.software is None:
        return []
    if not rule.software:
        return [f"software: '{software}' but {rule.name} originals carry none"] if software else []
    if glob_match(software, rule.software):
        return []
    shown = f"'{software}'" if software else "empty tag"
    return [f"software: {shown} matches none of {list(rule.software)}"]


def _class_reasons(row: dict[str, Any], rule: ClassRule) -> list[str]:
    """Software / shape / quality / table checks of one class."""
    reasons = _software_reasons(row["exif_software"], rule)
    if rule.shapes is not None:
        w, h = int(row["width"]), int(row["height"])
        if (w, h) not in rule.shapes and (h, w) not in rule.shapes:
            allowed = ", ".join(f"{a}x{b}" for a, b in rule.shapes)
            reasons.append(f"shape: {w}x{h} is not a {rule.name} size ({allowed}, either orientation)")
    if row["format"] in ("JPEG", "MPO") and rule.min_quality is not None:
        if row["quality"] in ("", None):
            reasons.append(f"quality: undefined (ImageMagick finds no quality >= 51 for these "
                           f"tables) < {rule.min_quality}")
        elif int(row["quality"]) < rule.min_quality:
            reasons.append(f"quality: {row['quality']} < {rule.min_quality}")
    reasons += _table_reasons(row, rule)
    return reasons


def _table_reasons(row: dict[str, Any], rule: ClassRule) -> list[str]:
    if rule.tables == "any" or row["format"] not in ("JPEG", "MPO"):
        return []
    ijg = row["ijg_quality"] not in ("", None)
    if rule.tables == "ijg" and not ijg:
        return [f"tables: custom quantisation tables; {rule.name} writes scaled IJG tables"]
    if rule.tables == "custom" and ijg:
        return [f"tables: scaled IJG tables (q={row['ijg_quality']}) as libjpeg re-saves write; "
                f"{rule.name} writes its own tables"]
    return []


def folder_class(path: str, src: Path, rules: Rules) -> ClassRule | None:
    """SRC/<class>/... names the class (scrapes are often sorted by the query's model)."""
    try:
        parts = Path(path).relative_to(src).parts
    except ValueError:
        return None
    return rules.by_name(parts[0]) if len(parts) > 1 else None


def judge(row: dict[str, Any], rules: Rules, src: Path) -> None:
    """Fill class / decision / reasons / resave of one analysed row (duplicates come later)."""
    evidence = resave_evidence(row["exif_software"], row["creator_tool"],
                               bool(row["adobe_app14"]), rules.editors)
    row.update(resave=bool(evidence), resave_evidence=", ".join(evidence), duplicate_of="")
    folder_rule = folder_class(row["path"], src, rules)
    if not row["format"]:  # nothing could be read: the one reason says why
        row.update({"class": folder_rule.name if folder_rule else "",
                    "reasons": [f"unreadable: {row['read_error']}"]})
        return
    reasons = _file_reasons(row, rules)
    model_rule = rules.class_for_model(row["exif_model"])
    rule = folder_rule or model_rule
    model_reason = _model_reason(row["exif_model"], model_rule, folder_rule)
    if model_reason:
        reasons.append(model_reason)
    if rule is not None:
        reasons += _class_reasons(row, rule)
    row.update({"class": rule.name if rule else "", "reasons": reasons})


def mark_duplicates(rows: list[dict[str, Any]], train: Sequence[tuple[str, str]],
                    max_distance: int) -> int:
    """Reject near-duplicates of training images and of earlier files; returns how many.

    Files that pass every other check go first (then by sorted path), so a copy that
    fails a rule never displaces a good one; training images always win.
    """
    index = HashIndex(max_distance)
    for path, hashes in train:
        variants = parse_hashes(hashes)
        if variants:
            index.add(variants[0], path)
    order = sorted(range(len(rows)), key=lambda i: (bool(rows[i]["reasons"]), rows[i]["path"]))
    found = 0
    for i in order:
        row = rows[i]
        variants = parse_hashes(row["phash"])
        if not variants:
            continue
        hit = index.first_match(variants)
        if hit is None:
            index.add(variants[0], row["path"])
            continue
        row["duplicate_of"] = index.keys[hit]
        row["reasons"].append(f"near-duplicate of {index.keys[hit]}")
        found += 1
    return found


def decide(rows: list[dict[str, Any]], rules: Rules, src: Path,
           train: Sequence[tuple[str, str]] = ()) -> int:
    """Judge every row, then remove near-duplicates; returns the number of duplicates."""
    for row in rows:
        judge(row, rules, src)
        row["dest"] = ""  # set again by place_kept for the files kept this time
    found = mark_duplicates(rows, train, rules.duplicate_max_distance)
    for row in rows:
        row["decision"] = "reject" if row["reasons"] else "keep"
        # ';' separates reasons, so one inside an EXIF string must not split a reason.
        row["reasons"] = ";".join(r.replace(";", ",") for r in row["reasons"])
    return found


# ---------------------------------------------------------------- report + cache

def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def write_report(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    records = [{c: _csv_value(row.get(c, "")) for c in REPORT_COLUMNS} for row in rows]
    return write_csv(path, pd.DataFrame(records, columns=REPORT_COLUMNS))


def _from_csv(rec: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {c: rec.get(c, "") for c in ANALYSIS_COLUMNS}
    for col in _INT_COLUMNS:
        row[col] = int(row[col]) if row[col] not in ("", None) else None
    for col in _BOOL_COLUMNS:
        if col in row:  # "" (never measured) stays empty, so a resumed report is byte-identical
            row[col] = {"1": True, "0": False}.get(row[col])
    return row


def read_previous(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier report by path ({} when absent or unusable: then re-read all)."""
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = set(ANALYSIS_COLUMNS) - set(df.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        return {rec["path"]: {**_from_csv(rec), "dest": rec.get("dest", "")}
                for rec in df.to_dict("records")}
    except (ValueError, pd.errors.ParserError) as exc:
        stage_log(STAGE, f"ignoring previous report {path}: {exc}")
        return {}


def _unchanged(prev: dict[str, Any] | None, path: str) -> bool:
    if prev is None or prev.get("analyzer") != ANALYZER_VERSION:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns


class _Checkpoint:
    """Write the analysis done so far every CHECKPOINT_SECONDS, so a killed run resumes."""

    def __init__(self, write: Callable[[list[dict[str, Any]]], None]):
        self.write, self.last = write, time.monotonic()

    def __call__(self, rows: Iterable[dict[str, Any]]) -> None:
        if time.monotonic() - self.last > CHECKPOINT_SECONDS:
            # dest too: the next run removes outputs that are no longer kept
            self.write([{c: r.get(c, "") for c in [*ANALYSIS_COLUMNS, "dest"]} for r in rows])
            self.last = time.monotonic()


def _wants_pixels(row: dict[str, Any], rules: Rules, src: Path, decode_all: bool) -> bool:
    """Decode a readable JPEG only if it passes every header check (or with decode_all):
    most scraped photos fail on model or size, and skipping them avoids reading
    hundreds of GB of pixel data."""
    if row["decoded"] or row["read_error"] or row["format"] not in ("JPEG", "MPO"):
        return False
    if decode_all:
        return True
    judge(row, rules, src)
    return not row["reasons"]


def analyse_all(paths: Sequence[str], previous: dict[str, dict[str, Any]], rules: Rules,
                src: Path, workers: int = 1,
                checkpoint: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
                decode_all: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """Header pass over new/changed files, then a pixel pass over the candidates.

    Returns rows in ``paths`` order and counts (reused, read, decoded).
    """
    reused = {p: dict(previous[p]) for p in paths if _unchanged(previous.get(p), p)}
    todo = [p for p in paths if p not in reused]
    save = _Checkpoint(checkpoint)
    fresh: dict[str, dict[str, Any]] = {}
    for row in parallel_map(analyse_file, todo, workers, "read headers", unit="file"):
        fresh[row["path"]] = row
        save([*reused.values(), *fresh.values()])
    rows = [reused.get(p) or fresh[p] for p in paths]
    need = [r for r in rows if _wants_pixels(r, rules, src, decode_all)]
    for row, result in zip(need, parallel_map(decode_file, [r["path"] for r in need],
                                              workers, "decode", unit="file"), strict=True):
        row.update(result)
        save(rows)
    return rows, Counter(reused=len(reused), read=len(todo), decoded=len(need))


def train_hashes(data_dir: Path, cache: Path, workers: int) -> list[tuple[str, str]]:
    """(path, pHash variants) of every training image, cached next to the report."""
    _, scan = scan_train(data_dir)
    paths = [os.path.abspath(p) for p in scan.table["path"]]
    previous = {}
    if cache.is_file():
        try:
            df = pd.read_csv(cache, dtype=str, keep_default_na=False)
            previous = {r["path"]: r for r in df.to_dict("records")}
        except (ValueError, KeyError, pd.errors.ParserError):
            previous = {}  # a damaged cache only costs re-hashing
    rows, todo = [], []
    for p in paths:
        st = os.stat(p)
        rec = previous.get(p)
        if rec and rec.get("size") == str(st.st_size) and rec.get("mtime_ns") == str(st.st_mtime_ns):
            rows.append(rec)
        else:
            todo.append(p)
            rows.append({"path": p, "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)})
    done = dict(zip(todo, parallel_map(hash_file, todo, workers, "hash train", unit="file"), strict=True))
    for rec in rows:
        rec["phash"] = rec.get("phash", "") if rec["path"] not in done else done[rec["path"]]
    write_csv(cache, pd.DataFrame(rows, columns=["path", "size", "mtime_ns", "phash"]))
    stage_log(STAGE, f"hashed {len(todo)} training images under {data_dir / TRAIN_DIR} "
                     f"({len(paths) - len(todo)} cached in {cache})")
    return [(r["path"], r["phash"]) for r in rows]


# ---------------------------------------------------------------------- outputs

def list_inputs(src: Path, exclude: Sequence[Path]) -> list[str]:
    """Every visible regular file under ``src`` (absolute, sorted), minus our own outputs."""
    excluded = {Path(os.path.abspath(p)) for p in exclude}
    out = []
    for root, dirs, files in os.walk(src):
        here = Path(os.path.abspath(root))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and here / d not in excluded)
        out += [str(here / f) for f in files
                if not f.startswith(".") and here / f not in excluded and (here / f).is_file()]
    return sorted(out)


def _place(src: Path, dest: Path, copy: bool) -> tuple[bool, bool]:
    """Link or copy ``src`` to ``dest`` atomically; returns (changed, fell back to copy)."""
    if dest.exists():
        if os.path.samefile(src, dest):
            return False, False
        s, d = src.stat(), dest.stat()
        if copy and s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return False, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{temp_prefix(dest)}tmp")  # hidden: never read as an image
    fell_back = False
    try:
        if copy:
            shutil.copy2(src, tmp)
        else:
            try:
                os.link(src, tmp)
            except OSError:  # other filesystem, or links not allowed: copy instead
                shutil.copy2(src, tmp)
                fell_back = True
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True, fell_back


def _dest_for(row: dict[str, Any], out: Path, taken: set[Path]) -> Path:
    """OUT/<class>/<file name>; a second file with the same name gets a path-hash suffix."""
    src = Path(row["path"])
    dest = out / row["class"] / src.name
    if dest in taken:
        tag = hashlib.sha1(row["path"].encode("utf-8")).hexdigest()[:8]
        dest = dest.with_name(f"{src.stem}__{tag}{src.suffix}")
    taken.add(dest)
    return dest


def place_kept(rows: list[dict[str, Any]], out: Path, copy: bool,
               previous: dict[str, dict[str, Any]]) -> Counter:
    """Put kept files under OUT/<class>/ and remove outputs an earlier run placed but
    that are no longer kept (only paths listed in that run's report, inside OUT)."""
    taken: set[Path] = set()
    counts: Counter[str] = Counter()
    for row in rows:
        if row["decision"] != "keep":
            continue
        dest = _dest_for(row, out, taken)
        changed, fell_back = _place(Path(row["path"]), dest, copy)
        row["dest"] = str(dest)
        counts["placed" if changed else "unchanged"] += 1
        counts["copied_instead_of_link"] += fell_back
    current = {row["dest"] for row in rows if row["dest"]}
    root = out.absolute()
    for prev in previous.values():
        stale = prev.get("dest") or ""
        if stale and stale not in current and Path(stale).absolute().is_relative_to(root) and Path(stale).is_file():
            Path(stale).unlink()
            counts["stale_removed"] += 1
    return counts


def _log_outcome(rows: Sequence[dict[str, Any]], duplicates: int, placed: Counter,
                 out: Path, copy: bool) -> None:
    kept = Counter(r["class"] for r in rows if r["decision"] == "keep")
    codes = Counter(reason_code(x) for r in rows if r["reasons"] for x in r["reasons"].split(";"))
    stage_log(STAGE, f"kept {sum(kept.values())}/{len(rows)}: "
                     + (", ".join(f"{k}={v}" for k, v in sorted(kept.items())) or "none"))
    stage_log(STAGE, "rejection reasons (a file can have several): "
                     + (", ".join(f"{k}={v}" for k, v in codes.most_common()) or "none")
                     + f"; {duplicates} near-duplicates")
    fallback = placed["copied_instead_of_link"]
    stage_log(STAGE, f"{'copied' if copy else 'linked'} {placed['placed']} new files into "
                     f"{out}/<class>/ ({placed['unchanged']} already there, "
                     f"{placed['stale_removed']} stale removed"
                     + (f", {fallback} copied: hard links impossible" if fallback else "") + ")")


def filter_external(src: Path, rules_path: Path, out: Path, train: Path | None = None, copy: bool = False,
                    workers: int = 1, report: Path | None = None, decode_all: bool = False) -> Path:
    """Judge every file under ``src``, place the kept ones under ``out/<class>/`` and write the report
    (default ``out/filter_report.csv``); returns the report's path."""
    given, src = src, Path(os.path.abspath(src))
    if not src.is_dir():
        raise UsageError(f"source folder not found: {given}")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    rules = load_rules(rules_path)
    report = Path(report) if report else out / DEFAULT_REPORT_NAME
    cache = report.with_name(report.stem + ".train_hashes.csv")
    remove_stale_temps(out, recursive=True)  # links/reports a killed earlier run left half-made
    if report.parent != out:
        remove_stale_temps(report.parent)
    previous = read_previous(report)
    paths = list_inputs(src, exclude=[out, report, cache])
    stage_log(STAGE, f"rules {rules_path}: {len(rules.classes)} classes; {len(paths)} files under {src}")

    def checkpoint(done: list[dict[str, Any]]) -> None:
        write_report(report, [{**r, "decision": "pending"} for r in done])

    train_rows = train_hashes(train, cache, workers) if train else []
    start = time.monotonic()
    rows, n = analyse_all(paths, previous, rules, src, workers, checkpoint, decode_all)
    took = time.monotonic() - start
    stage_log(STAGE, f"read {n['read']} files, reused {n['reused']} unchanged from {report}; "
                     f"decoded {n['decoded']} candidates ({took:.1f} s, "
                     f"{n['read'] / max(took, 1e-9):.0f} files/s on {workers} worker(s))")
    duplicates = decide(rows, rules, src, train_rows)
    placed = place_kept(rows, out, copy, previous)
    write_report(report, rows)
    _log_outcome(rows, duplicates, placed, out, copy)
    stage_log(STAGE, f"wrote {report}")
    return report
