"""The rules file of ``camid filter-external`` (``configs/external_rules.yaml``): its schema, and
the reason codes a file is rejected with.

One definition for everything that reads or writes rules: the filter judges by them,
``camid identify``'s metadata check maps EXIF models to classes with them, the filter's
score counts the reason codes, and ``camid simulate --external`` writes a rules file for
its simulated cameras (``rules_mapping``) and names the reason each planted file should get.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import RulesError
from .exif import DEFAULT_EDITOR_PATTERNS, normalise_model

# Reason codes: a report's reason is ``<code>: <detail>`` (``near-duplicate of <path>``), and
# ``reason_code`` recovers the code, as the filter's log and score count them.
UNREADABLE = "unreadable"
NOT_JPEG = "not-jpeg"
COLOUR_MODE = "colour-mode"
TOO_SMALL = "too-small"
EXIF = "exif"
RESAVE = "resave"
MODEL = "model"
SOFTWARE = "software"
SHAPE = "shape"
QUALITY = "quality"
TABLES = "tables"
NEAR_DUPLICATE = "near-duplicate"
REASON_CODES = (UNREADABLE, NOT_JPEG, COLOUR_MODE, TOO_SMALL, EXIF, RESAVE, MODEL, SOFTWARE, SHAPE, QUALITY,
                TABLES, NEAR_DUPLICATE)


def reason_code(reason: str) -> str:
    """The code of a report reason (``"quality: 80 < 89"`` -> ``"quality"``), as the log counts them."""
    return reason.split(":", 1)[0].split(" of ", 1)[0]


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


def rules_mapping(rules: Rules) -> dict[str, Any]:
    """``rules`` as the mapping ``parse_rules`` reads (the YAML file's keys, in its order);
    ``editors`` only when not the default, so a written file follows the filter's list."""
    out: dict[str, Any] = {"min_side": rules.min_side, "reject_resaved": rules.reject_resaved,
                           "duplicate_max_distance": rules.duplicate_max_distance}
    if rules.editors != DEFAULT_EDITOR_PATTERNS:
        out["editors"] = list(rules.editors)
    out["classes"] = [{
        "name": r.name, "models": list(r.models),
        "software": None if r.software is None else list(r.software),
        "shapes": None if r.shapes is None else [list(s) for s in r.shapes],
        "min_quality": r.min_quality,
        "tables": r.tables,
    } for r in rules.classes]
    return out
