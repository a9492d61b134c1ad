"""ImageNet weights files: where each backbone's library publishes it, fetching and verifying
it into ``weights_dir`` (``camid weights fetch``), and the list of what a config still lacks.

A file is verified before it takes its name: the SHA-256 prefix its published name carries
(the torch.hub convention that pretrainedmodels' and torchvision's file names follow, e.g.
``se_resnext50_32x4d-a260b3a4.pth``; compared over the prefix's length, as
``torch.hub.check_hash`` does), or a digest from a ``--sums`` file; where neither exists (timm's
Hugging Face files) the byte count the server announced. Then it must read as a state dict
of tensors. Downloads go to ``<file>.part`` next to the target, resume from there with an
HTTP Range request, and are renamed into place only once verified.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import CheckpointError, ConfigError, UsageError
from ..util.io import sha256_file, write_atomic
from ..util.log import progress, stage_log
from .registry import BackboneSpec, find_weights, get_spec, read_state_dict

CHUNK = 1 << 20
# A name that carries a digest: <stem>-<hex>.<ext> (torch.hub's HASH_REGEX, at least 8 hex digits).
_PREFIX_RE = re.compile(r"-([0-9a-f]{8,})\.[A-Za-z]+$")


@dataclass(frozen=True)
class WeightsFile:
    """One backbone's published ImageNet weights."""

    backbone: str
    name: str  # path under weights_dir: the backbone's canonical weights file name
    url: str  # where its library publishes it
    sha256: str | None  # hex digest or prefix of one; None: none published

    def source(self, base_url: str | None) -> str:
        """The URL to read: the published one, or the same file name under a mirror."""
        return base_url.rstrip("/") + "/" + self.name if base_url else self.url


def digest_in_name(name: str) -> str | None:
    """The SHA-256 prefix a published file name carries (``densenet201-5750cbb1e.pth``), or None."""
    m = _PREFIX_RE.search(name)
    return m.group(1) if m else None


def published(spec: BackboneSpec) -> WeightsFile | None:
    """The published weights of a backbone (None: it trains from scratch, or has no URL)."""
    if not spec.weights_files or not spec.weights_url:
        return None
    digest = digest_in_name(spec.weights_url.rsplit("/", 1)[-1]) if spec.family == "pretrainedmodels" else None
    return WeightsFile(spec.name, spec.weights_files[0], spec.weights_url, digest)


def backbones_of(cfg: Config) -> list[str]:
    """The config's backbones, each once, in config order."""
    return list(dict.fromkeys(m.backbone for m in cfg.models))


def missing_weights(cfg: Config) -> list[tuple[str, Path]]:
    """(backbone, expected path) for every backbone of the config that expects ImageNet weights
    and finds none under ``train.weights_dir``."""
    out = []
    for backbone in backbones_of(cfg):
        try:
            spec = get_spec(backbone)
        except ConfigError:
            continue  # not a weights question: the run's own job fails on the name and is reported by it
        if spec.weights_files and find_weights(spec, cfg.train.weights_dir) is None:
            out.append((backbone, Path(cfg.train.weights_dir) / spec.weights_files[0]))
    return out


def require_weights(cfg: Config, config_path: str | None) -> None:
    """Refuse to start training while a backbone's ImageNet weights are missing (unless
    ``train.allow_random_init``): one forgotten file used to train for hours from random init."""
    if cfg.train.allow_random_init:
        return
    missing = missing_weights(cfg)
    if missing:
        files = ", ".join(f"{b}: {p}" for b, p in missing)
        raise UsageError(f"{len(missing)} ImageNet weights file(s) missing ({files}); run `camid weights fetch "
                         f"--config {config_path or '<config>'}` (or set train.allow_random_init: true to train "
                         "them from random init)")


def read_sums(path: str | Path) -> dict[str, str]:
    """``sha256sum`` output (``<hex>  <name>``) -> {file name: digest}; names are matched by their
    last path component."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{8,64}", parts[0]):
            raise UsageError(f"{path}:{n}: expected '<sha256>  <file name>', got {line!r}")
        out[Path(parts[1].lstrip("*")).name] = parts[0].lower()
    return out


def verify(path: Path, wf: WeightsFile) -> str:
    """Why ``path`` is not ``wf`` ("" when it is): the digest, then that it reads as weights."""
    if wf.sha256:
        digest = sha256_file(path)
        if not digest.startswith(wf.sha256):
            return f"SHA-256 {digest[:16]}... does not match the expected {wf.sha256}"
    try:
        read_state_dict(path)
    except CheckpointError as exc:
        return str(exc)
    return ""


@dataclass
class Outcome:
    wf: WeightsFile
    ok: bool
    message: str


class _Interrupted(Exception):
    """The transfer stopped before its announced length: what arrived is kept to resume from."""


def _chunks(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        try:
            chunk = resp.read(CHUNK)
        except (http.client.IncompleteRead, OSError) as exc:
            raise _Interrupted(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        yield chunk


def _download(url: str, part: Path, timeout: float, desc: str) -> int | None:
    """Append ``url`` to ``part`` from where it stops (HTTP Range); returns the announced total
    size or None. Raises urllib's errors, or _Interrupted with the partial file kept."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https URLs of the registry)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left past our bytes: the part is complete
            return have
        raise
    with resp:
        length = resp.headers.get("Content-Length")
        if have and resp.status != 206:  # the server ignored the Range: start over
            have = 0
        total = have + int(length) if length is not None else None
        n_chunks = None if length is None else -(-int(length) // CHUNK)
        with open(part, "ab" if have else "wb") as fh:
            for chunk in progress(_chunks(resp), desc, total=n_chunks, unit="MiB"):
                fh.write(chunk)
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Interrupted(f"{got} of {total} bytes")
    return total


def fetch_file(wf: WeightsFile, weights_dir: Path, base_url: str | None = None, mirror: Path | None = None,
               timeout: float = 60.0, retries: int = 3) -> Outcome:
    """Put ``wf`` verified under ``weights_dir``: kept if already there and right, else copied
    from ``mirror`` or downloaded (resumed up to ``retries`` times), verified, then renamed in."""
    dest = weights_dir / wf.name
    part = dest.with_name(dest.name + ".part")
    if dest.is_file():
        problem = verify(dest, wf)
        if not problem:
            return Outcome(wf, True, f"{dest} present, verified")
        stage_log("weights", f"{wf.backbone}: {dest} is not the published file ({problem}); fetching it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        src = next((p for p in (mirror / wf.name, mirror / Path(wf.name).name) if p.is_file()), None)
        if src is None:
            return Outcome(wf, False, f"not in {mirror} (expected {mirror / wf.name}); published at {wf.url}")
        shutil.copyfile(src, part)
        where = str(src)
    else:
        where = wf.source(base_url)
        total = None
        for attempt in range(retries + 1):
            try:
                total = _download(where, part, timeout, wf.name)
                break
            except _Interrupted as exc:
                if attempt == retries:
                    return Outcome(wf, False, f"transfer from {where} interrupted ({exc}) {retries + 1} times; "
                                              f"{part} is kept: run again to resume")
                stage_log("weights", f"{wf.backbone}: transfer interrupted ({exc}); resuming")
            except urllib.error.HTTPError as exc:
                return Outcome(wf, False, f"HTTP {exc.code} ({exc.reason}) from {where}; get the file elsewhere and "
                                          f"put it at {dest}")
            except (TimeoutError, urllib.error.URLError, ConnectionError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                return Outcome(wf, False, f"cannot reach {where} ({reason}); download it where there is network and "
                                          f"put it at {dest} (or `camid weights fetch --from DIR`)")
        if total is None and not wf.sha256:
            stage_log("weights", f"{wf.backbone}: no digest published and no size announced: only loading is checked")
    problem = verify(part, wf)
    if problem:
        part.unlink()
        return Outcome(wf, False, f"{where} refused and deleted: {problem}")
    write_atomic(dest, lambda tmp: os.replace(part, tmp))
    how = f"SHA-256 {wf.sha256[:16]}" if wf.sha256 else "no digest published: size and loading"
    return Outcome(wf, True, f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB) from {where}; verified: {how}")


def fetch(files: Sequence[WeightsFile], weights_dir: str | Path, base_url: str | None = None,
          mirror: str | Path | None = None, sums: dict[str, str] | None = None, timeout: float = 60.0,
          retries: int = 3) -> list[Outcome]:
    """``fetch_file`` for each, one line per file; ``sums`` (file name -> digest) replaces the
    published digests, e.g. for a mirror's own re-saved files."""
    out = []
    for wf in files:
        digest = (sums or {}).get(Path(wf.name).name)
        if digest:
            wf = WeightsFile(wf.backbone, wf.name, wf.url, digest)
        result = fetch_file(wf, Path(weights_dir), base_url, Path(mirror) if mirror else None, timeout, retries)
        stage_log("weights", f"{wf.backbone}: {'' if result.ok else 'FAILED: '}{result.message}")
        out.append(result)
    return out
