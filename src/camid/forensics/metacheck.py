"""The EXIF cross-check of ``camid identify``: what the metadata claims, next to what the pixels say.

An examiner reads the EXIF Make/Model first, but metadata is easy to edit and pixels much
less so (docs/competition.md: the seeds filter scraped photos by EXIF for that reason).
So identify prints the tags beside the network's verdict and says when they disagree.

The EXIF model string is mapped to a class with ``camid filter-external``'s rules
(``configs/external_rules.yaml``: ``Rules.class_for_model``, one implementation), and the
header is read by ``camid.forensics.exif`` (the editor tags too), so a photo the filter
would reject as re-saved is flagged "edited" here. ``status`` is one of ``STATUSES``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.images import open_checked
from ..errors import ImageReadError
from .exif import DEFAULT_EDITOR_PATTERNS, inspect_image
from .openset import UNKNOWN
from .rules import Rules, load_rules

DISAGREE_WHY = "metadata is easy to edit, pixels less so"
STATUSES = {
    "agree": "the EXIF model is a known class and the pixels say the same class",
    "disagree": "the EXIF model is a known class, the pixels say another class or an unknown camera",
    "foreign": "the EXIF model belongs to none of the trained classes",
    "no_model": "EXIF present, but no Model tag",
    "no_exif": "no EXIF Make, Model or Software tag at all",
    "exif_error": "an EXIF block is present but cannot be parsed",
    "no_rules": "no rules file: the EXIF model is shown but not mapped to a class",
    "unreadable": "the file's header could not be read",
}


@dataclass(frozen=True)
class RulesSource:
    """The rules the EXIF model is mapped with, or why there are none."""

    rules: Rules | None
    path: str = ""
    note: str = ""  # why there are no rules

    @property
    def editors(self) -> Sequence[str]:
        return self.rules.editors if self.rules else DEFAULT_EDITOR_PATTERNS


def find_rules(given: str | None, default: str, config_path: str | None) -> RulesSource:
    """``--rules FILE`` must load (a RulesError otherwise). The default is looked up from the
    current folder, then next to the config file (``configs/``); when absent the check runs
    without class mapping and says so. A default that exists but is invalid is an error."""
    if given:
        return RulesSource(load_rules(given), str(given))
    candidates = [Path(default)]
    if config_path and not Path(default).is_absolute():
        candidates.append(Path(config_path).parent / Path(default).name)
    for path in candidates:
        if path.is_file():
            return RulesSource(load_rules(path), str(path))
    return RulesSource(None, note=f"rules file {default} not found (give --rules FILE); "
                                  "EXIF models are shown but not mapped to classes")


@dataclass(frozen=True)
class MetaCheck:
    status: str
    make: str = ""
    model: str = ""
    software: str = ""
    creator_tool: str = ""
    exif_class: str = ""  # the rules' class of the EXIF model ("" when none)
    edited: tuple[str, ...] = ()  # editor evidence (EXIF Software, XMP CreatorTool, Adobe APP14)
    error: str = ""
    note: str = ""  # the sentence printed under the verdict

    def lines(self) -> list[str]:
        if self.status == "unreadable":
            return [f"EXIF: header unreadable ({self.error})"]
        if self.status == "no_exif":
            out = ["EXIF: none (no Make, Model or Software tag): nothing to cross-check"]
        else:
            tags = ", ".join(f"{k} {v!r}" for k, v in (("Make", self.make), ("Model", self.model),
                                                       ("Software", self.software)) if v)
            out = [f"EXIF: {tags or 'no Make/Model/Software'}"
                   + (f"; XMP CreatorTool {self.creator_tool!r}" if self.creator_tool else ""),
                   f"EXIF check: {self.note}"]
        if self.edited:
            out.append(f"EXIF check: edited ({', '.join(self.edited)}): the file went through an editor "
                       "after the camera, so its pixels were re-encoded and its metadata may have been rewritten")
        return out


def _note(status: str, model: str, exif_class: str, verdict: str, top1: str, classes: Sequence[str],
          rules: RulesSource, error: str) -> str:
    shown = f"EXIF model {model!r}"
    pixels = ("the pixels match no known camera" + (f" (closest: {top1})" if top1 else "")
              if verdict == UNKNOWN else f"the pixels say {verdict}")
    if status == "exif_error":
        return f"EXIF unreadable ({error}): nothing to cross-check"
    if status == "no_model":
        return "no EXIF Model tag: nothing to compare with the pixels"
    if status == "no_rules":
        return f"{shown} not mapped to a class: {rules.note}"
    if status == "agree":
        return f"{shown} is {exif_class} in {rules.path}: agrees with the pixels"
    if status == "disagree":
        return f"metadata disagrees: {shown} says {exif_class}, {pixels} ({DISAGREE_WHY})"
    # foreign
    where = (f"{rules.path} maps it to {exif_class}, a class these models were not trained on" if exif_class
             else f"no rule in {rules.path} maps it to one of the {len(classes)} known classes")
    if verdict == UNKNOWN:
        return f"{shown} is outside the known classes ({where}): consistent with the unknown verdict"
    return f"metadata disagrees: {shown} is outside the known classes ({where}), {pixels} ({DISAGREE_WHY})"


def cross_check(path: str | Path, verdict: str, top1: str, classes: Sequence[str], rules: RulesSource) -> MetaCheck:
    """The metadata of ``path`` against the pixels' ``verdict`` (a class or ``UNKNOWN``); never raises."""
    try:
        with open_checked(path) as im:
            facts = inspect_image(im, rules.editors)
    except ImageReadError as exc:
        return MetaCheck("unreadable", error=exc.reason)
    tags = facts.exif
    make, model, software = tags.make.strip(), tags.model.strip(), tags.software.strip()
    exif_class = ""
    if tags.error:
        status = "exif_error"
    elif not (make or model or software):
        status = "no_exif"
    elif not model:
        status = "no_model"
    elif rules.rules is None:
        status = "no_rules"
    else:
        rule = rules.rules.class_for_model(model)
        exif_class = rule.name if rule else ""
        if not exif_class or exif_class not in classes:
            status = "foreign"
        else:
            status = "agree" if exif_class == verdict else "disagree"
    note = _note(status, model, exif_class, verdict, top1, classes, rules, tags.error)
    return MetaCheck(status, make=make, model=model, software=software, creator_tool=facts.creator_tool,
                     exif_class=exif_class, edited=tuple(facts.resave), error=tags.error, note=note)
