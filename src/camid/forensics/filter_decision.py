"""The verdict of ``camid filter-external`` on analysed files: every rule a file fails is a
reason (``rules``' codes), then near-duplicates of training images and of earlier kept
files are rejected. Decisions are recomputed from the cached facts on every run."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .exif import glob_match, resave_evidence
from .phash import HashIndex, parse_hashes
from .rules import (
    COLOUR_MODE,
    EXIF,
    MODEL,
    NEAR_DUPLICATE,
    NOT_JPEG,
    QUALITY,
    RESAVE,
    SHAPE,
    SOFTWARE,
    TABLES,
    TOO_SMALL,
    UNREADABLE,
    ClassRule,
    Rules,
)


def _file_reasons(row: dict[str, Any], rules: Rules) -> list[str]:
    """Reasons that do not depend on the class (the header was readable)."""
    reasons = []
    if row["read_error"]:
        reasons.append(f"{UNREADABLE}: {row['read_error']}")
    if row["format"] not in ("JPEG", "MPO"):
        reasons.append(f"{NOT_JPEG}: {row['format']} image (mode {row['mode']})")
    elif row["mode"] != "RGB":
        kind = {"L": "grayscale", "CMYK": "CMYK"}.get(row["mode"], row["mode"])
        reasons.append(f"{COLOUR_MODE}: {kind} JPEG (cameras write YCbCr colour)")
    if min(int(row["width"]), int(row["height"])) < rules.min_side:
        reasons.append(f"{TOO_SMALL}: {row['width']}x{row['height']} (min side {rules.min_side})")
    if row["exif_error"]:
        reasons.append(f"{EXIF}: {row['exif_error']}")
    if rules.reject_resaved and row["resave_evidence"]:
        reasons.append(f"{RESAVE}: {row['resave_evidence']}")
    return reasons


def _model_reason(model: str, rule: ClassRule | None, folder_rule: ClassRule | None) -> str | None:
    shown = f"EXIF model '{model.strip()}'" if model.strip() else "no EXIF model tag"
    if folder_rule is None:
        if rule:
            return None
        return f"{MODEL}: {shown} matches no class" if model.strip() else f"{MODEL}: {shown}"
    if rule is folder_rule:
        return None
    return f"{MODEL}: {shown} is not a {folder_rule.name} model (expected {', '.join(folder_rule.models)})"


def _software_reasons(software: str, rule: ClassRule) -> list[str]:
    software = software.strip()
    if rule.software is None:
        return []
    if not rule.software:
        return [f"{SOFTWARE}: '{software}' but {rule.name} originals carry none"] if software else []
    if glob_match(software, rule.software):
        return []
    shown = f"'{software}'" if software else "empty tag"
    return [f"{SOFTWARE}: {shown} matches none of {list(rule.software)}"]


def _class_reasons(row: dict[str, Any], rule: ClassRule) -> list[str]:
    """Software / shape / quality / table checks of one class."""
    reasons = _software_reasons(row["exif_software"], rule)
    if rule.shapes is not None:
        w, h = int(row["width"]), int(row["height"])
        if (w, h) not in rule.shapes and (h, w) not in rule.shapes:
            allowed = ", ".join(f"{a}x{b}" for a, b in rule.shapes)
            reasons.append(f"{SHAPE}: {w}x{h} is not a {rule.name} size ({allowed}, either orientation)")
    if row["format"] in ("JPEG", "MPO") and rule.min_quality is not None:
        if row["quality"] in ("", None):
            reasons.append(f"{QUALITY}: undefined (ImageMagick finds no quality >= 51 for these "
                           f"tables) < {rule.min_quality}")
        elif int(row["quality"]) < rule.min_quality:
            reasons.append(f"{QUALITY}: {row['quality']} < {rule.min_quality}")
    reasons += _table_reasons(row, rule)
    return reasons


def _table_reasons(row: dict[str, Any], rule: ClassRule) -> list[str]:
    if rule.tables == "any" or row["format"] not in ("JPEG", "MPO"):
        return []
    ijg = row["ijg_quality"] not in ("", None)
    if rule.tables == "ijg" and not ijg:
        return [f"{TABLES}: custom quantisation tables; {rule.name} writes scaled IJG tables"]
    if rule.tables == "custom" and ijg:
        return [f"{TABLES}: scaled IJG tables (q={row['ijg_quality']}) as libjpeg re-saves write; "
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
                    "reasons": [f"{UNREADABLE}: {row['read_error']}"]})
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
        row["reasons"].append(f"{NEAR_DUPLICATE} of {index.keys[hit]}")
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
