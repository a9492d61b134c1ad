"""PRNU test clustering: the test images of one device share its sensor noise.

The 4th place (Guanshuo Xu) went from 0.976 to 0.987 on the private leaderboard by building
reference patterns from clusters of test images. Here:

1. every test crop's noise residual (``prnu.query_residual``: wavelet denoiser, zero-mean,
   Wiener in the DFT domain) is normalised to unit energy, and the unaltered crops' pairwise
   correlations are turned into z-scores (``pairwise_z``);
2. the unaltered crops are clustered. By default the number of clusters comes from the data
   (``agglomerate``: groups merge while their cross links are significant in sum and at least
   ``min_cluster_z`` on average, so two devices never share a cluster, and a class may have two
   devices). When the test is declared balanced (``blend.balanced_test``: the competition's
   design, one device per class) they are split into as many clusters as classes (spectral),
   and a cluster whose two halves do not link to each other holds two sensors and is refused
   (``one_sensor``), as is one larger than ``max_size_ratio`` times a class's share;
3. a cluster counts only when it has ``min_cluster_size`` members and a mean pairwise z-score
   of ``min_cluster_z``; when less than ``min_clustered`` of the unaltered crops fall in such
   clusters the sensor noise is too weak to trust (real natural-scene crops, crops from
   different sensor positions) and the step changes nothing, saying why;
4. each cluster is named by the mean probability of each class over its members and over every
   base of the blend (``name_clusters``; bounded per crop, so a few confidently wrong crops cannot
   outvote the majority), and used only when the name survives ``name_confidence`` of bootstrap
   draws of its members and of the bases (``naming_confidence``). When the test holds one device
   of each class (``blend.prnu.one_device_per_class``; a declared balanced test implies it) the
   names are claimed one class per sensor, the most stable first (``claim_names``). The naming
   is taken again once step 5 has found the manipulated crops of each cluster, with their votes too;
5. every test crop is scored against every usable cluster's fingerprint (the sum of its
   members' residuals, the crop's own left out): a z-score at zero shift, and for ``_manip``
   crops also after resampling the fingerprint the way the competition's bicubic resize would
   have moved it (``scales``, with a +-``max_shift`` pixel search because centre-crop offsets are
   rounded); a crop whose best z-score reaches ``accept_z`` and beats the best cluster of another
   class by ``margin_z`` takes that cluster's class; an unaltered member of a usable cluster
   also takes its name when its z-score against that cluster reaches ``member_z``.

Crops that are not accepted keep the strategy's probabilities, so an unconfident clustering
changes nothing. z-scores are standardised by the spread of the scores against the clusters a
crop does not belong to (a robust estimate), so they read as standard deviations of noise.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy.cluster.vq import kmeans2
from scipy.stats import norm

from ..config import PROB_FLOOR, PrnuClusterConfig
from ..data.images import read_image
from ..data.layout import scan_test, solution_labels
from ..errors import DataError, ImageReadError
from ..forensics import prnu
from ..util.io import write_atomic, write_json
from ..util.log import stage_log
from ..util.pool import parallel_map

_SPLIT_Z = 3.0  # one_sensor: the halves of a one-device cluster link at least this clearly
# Canvas on which a fingerprint, known only on the centre crop, is resized like a whole photo.
_CANVAS = 4



@dataclass
class ClusterResult:
    cluster_of_unalt: np.ndarray  # (n_unalt,) cluster index of each unaltered crop
    cluster_class: np.ndarray  # (k,) class index named for each cluster
    cluster_ok: np.ndarray  # (k,) bool: the cluster is coherent enough to be used
    cluster_z: np.ndarray  # (k,) mean within-cluster pairwise z-score
    z: np.ndarray  # (n, k) best z-score of each crop against each cluster fingerprint
    scale: np.ndarray  # (n,) resize factor of the best match (1.0: none)
    accepted: np.ndarray  # (n,) bool
    label: np.ndarray  # (n,) class index of accepted crops, -1 otherwise
    info: dict = field(default_factory=dict)


def normalise(residuals: np.ndarray) -> np.ndarray:
    """(n, h, w) residuals -> zero-mean, unit-norm float32 vectors (n, h*w)."""
    r = residuals.reshape(len(residuals), -1).astype(np.float32)
    r -= r.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(r, axis=1, keepdims=True)
    return r / np.maximum(norm, 1e-12)


def _robust_sd(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64).ravel()
    mad = float(np.median(np.abs(x - np.median(x))))
    return 1.4826 * mad if mad > 0 else float(x.std() or 1.0)


def pairwise_z(r: np.ndarray) -> np.ndarray:
    """Correlation of unit residuals scaled by sqrt(pixels): ~N(0, 1) for unrelated sensors."""
    c = (r @ r.T) * np.sqrt(r.shape[1])
    off = ~np.eye(len(c), dtype=bool)
    c /= _robust_sd(c[off])
    np.fill_diagonal(c, 0.0)
    return c


def agglomerate(z: np.ndarray, min_link: float, merge_z: float | None = None) -> np.ndarray:
    """Sensor clusters of the crops, their number found from the data.

    Two groups a and b are merged, the strongest first, while the sum of the z-scores of their
    n_a x n_b cross links, divided by sqrt(n_a n_b) (~N(0, 1) when the groups share no sensor),
    reaches ``merge_z`` AND the mean cross link reaches ``min_link``. The sum gathers weak
    same-device links over many crops (one pair at z ~1.5 is noise, 12 x 12 of them are not);
    the mean keeps two devices apart however large their groups grow (their mean cross link is
    ~0, while a sum over thousands of links would pass any threshold on a slight bias).
    ``merge_z`` None: the one-sided 5% Bonferroni bound over the n(n-1)/2 pairs, so that pure
    noise is left as singletons whatever the number of crops (3.9 for 48 crops, 5.3 for 1320)."""
    n = len(z)
    label = np.arange(n)
    if n < 2:
        return label.astype(np.int64)
    if merge_z is None:
        merge_z = float(norm.isf(0.05 / (n * (n - 1) / 2)))
    cross = np.array(z, dtype=np.float64, copy=True)  # row g: sum of group g's links to each group
    np.fill_diagonal(cross, 0.0)
    size = np.ones(n)

    def scores(g: int) -> np.ndarray:
        pairs = size[g] * size
        out = np.where(cross[g] >= min_link * pairs, cross[g] / np.sqrt(np.maximum(pairs, 1.0)), -np.inf)
        out[g] = -np.inf
        return out

    score = np.stack([scores(g) for g in range(n)])
    while True:
        a, b = (int(i) for i in np.unravel_index(int(score.argmax()), score.shape))
        if score[a, b] < merge_z:
            break
        label[label == b] = a  # group b joins group a; b's row and column are retired
        cross[a] += cross[b]
        cross[:, a] += cross[:, b]
        cross[a, a] = 0.0
        size[a] += size[b]
        size[b] = 0.0
        score[b], score[:, b] = -np.inf, -np.inf
        score[a] = scores(a)
        score[a, size == 0] = -np.inf
        score[:, a] = score[a]
    # biggest cluster first, ties by first member, so the numbering is reproducible
    _, lab = np.unique(label, return_inverse=True)
    sizes = np.bincount(lab)
    first = np.array([np.flatnonzero(lab == c)[0] for c in range(len(sizes))])
    order = np.lexsort((first, -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[lab].astype(np.int64)


def spectral_clusters(z: np.ndarray, k: int, seed: int = 0, restarts: int = 10) -> np.ndarray:
    """Normalised spectral clustering (Ng-Jordan-Weiss) on the affinity max(z, 0) into ``k`` groups."""
    n = len(z)
    if n <= k:
        return np.arange(n)
    w = np.maximum(z, 0.0)
    d = w.sum(axis=1) + 1e-9
    lap = w / np.sqrt(d[:, None] * d[None, :])
    _, vecs = np.linalg.eigh(lap)
    v = vecs[:, -k:]
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    best: tuple[float, np.ndarray] | None = None
    for r in range(restarts):
        cent, lab = kmeans2(v, k, seed=seed + r, minit="++")
        inertia = float(((v - cent[lab]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, lab)
    if best is None:
        raise DataError(f"spectral clustering needs at least one restart, got {restarts}")
    return best[1]


def one_sensor(block: np.ndarray, seed: int = 0) -> bool:
    """Whether a cluster's crops share ONE sensor: split it in two (spectral) and ask that the
    two halves link to each other as well as within themselves. Two devices forced into one
    cluster have strong halves and cross links near 0 (the audit's mixed clusters still had a
    mean z of 2.6-3.8, above any coherence threshold, while their halves do not link at all)."""
    if len(block) < 4:
        return True
    half = spectral_clusters(block, 2, seed) == 1
    if half.all() or not half.any():
        return True
    cross = block[np.ix_(half, ~half)]
    within = [block[np.ix_(m, m)].sum() / max(m.sum() * (m.sum() - 1), 1) for m in (half, ~half)]
    # the cross links must be clearly there (their sum / sqrt(links), ~N(0, 1) for two sensors)
    # and at least half as strong as the weaker half's own links
    return bool(cross.sum() / np.sqrt(cross.size) >= _SPLIT_Z and cross.mean() >= 0.5 * min(within))


def name_clusters(members: np.ndarray, probs: np.ndarray | Sequence[np.ndarray], k_clusters: int) -> np.ndarray:
    """Class of each cluster from the mean probability of each class over its members, averaged
    over every base in ``probs`` (one (n, k) array per base). A crop adds at most 1 to a class, so
    a few confidently wrong crops cannot outvote the majority (a log-probability sum lets one
    crop at 1e-7 weigh as much as 16 right ones). Each cluster takes its own best class, so two
    clusters may carry the same name (a class whose test crops come from two devices; see
    ``claim_names`` for one device per class). -1: a cluster without members."""
    return _best_classes(cluster_evidence(members, probs, k_clusters))


def _best_classes(evidence: np.ndarray) -> np.ndarray:
    """(..., clusters, classes) evidence -> each cluster's best class (-1: empty, all nan)."""
    names = np.nan_to_num(evidence, nan=-1.0).argmax(axis=-1)
    names[~np.isfinite(evidence).all(axis=-1)] = -1
    return names.astype(np.int64)


def _stability(drawn: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Share of the (draws, clusters, classes) bootstrap evidence whose best class is ``names`` (0: unnamed)."""
    return np.where(names >= 0, (_best_classes(drawn) == names[None]).mean(axis=0), 0.0)


def cluster_evidence(members: np.ndarray, probs: np.ndarray | Sequence[np.ndarray], k_clusters: int) -> np.ndarray:
    """(k_clusters, classes) mean probability of each class over a cluster's members and the bases (nan: empty)."""
    bases = np.stack([np.asarray(p, dtype=np.float64) for p in _as_bases(probs)])
    out = np.full((k_clusters, bases.shape[2]), np.nan)
    for c in range(k_clusters):
        m = members == c
        if m.any():
            out[c] = bases[:, m].mean(axis=(0, 1))
    return out


def bootstrap_evidence(members: np.ndarray, probs: np.ndarray | Sequence[np.ndarray], k_clusters: int,
                       draws: int = 200, seed: int = 0) -> np.ndarray:
    """(draws, k_clusters, classes): ``cluster_evidence`` again on bootstrap draws of each cluster's
    members AND of the bases (both resampled with replacement; nan: empty cluster)."""
    bases = np.stack([np.asarray(p, dtype=np.float64) for p in _as_bases(probs)])
    rng = np.random.default_rng(seed)
    n_bases = len(bases)
    means = np.full((draws, k_clusters, bases.shape[2]), np.nan)
    for c in range(k_clusters):
        idx = np.flatnonzero(members == c)
        if not len(idx):
            continue
        w = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=draws)  # (draws, m)
        v = rng.multinomial(n_bases, np.full(n_bases, 1 / n_bases), size=draws)  # (draws, bases)
        means[:, c] = np.einsum("db,dm,bmk->dk", v, w, bases[:, idx]) / (len(idx) * n_bases)
    return means


def naming_confidence(members: np.ndarray, probs: np.ndarray | Sequence[np.ndarray], names: np.ndarray,
                      draws: int = 200, seed: int = 0) -> np.ndarray:
    """How stable each cluster's name is: the share of bootstrap draws (``bootstrap_evidence``) in
    which the cluster's best class is still that name. Near 1 only when the name holds whatever
    subset of crops and whichever base is asked; a cluster split between two classes, or whose
    bases disagree, lands near 0.5 or below."""
    return _stability(bootstrap_evidence(members, probs, len(names), draws, seed), names)


def claim_names(members: np.ndarray, probs: np.ndarray | Sequence[np.ndarray], usable: np.ndarray,
                threshold: float, draws: int = 200, seed: int = 0, one_per_class: bool = False,
                linked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(names, confidence) of the clusters; a ``usable`` cluster is used when its confidence
    reaches ``threshold``.

    Without ``one_per_class`` every cluster takes its own best class (``name_clusters``,
    ``naming_confidence``). With it (the test holds one device of each class: a declared balanced
    test, or a composition that put one device of every class in the test) two sensors never
    share a class, so the names are claimed one at a time: a cluster's confidence is the share of
    bootstrap draws in which its best free class is its name AND no cluster of another sensor
    wants that class more clearly (a larger lead over its own second class); the surest claims
    first, and a class once claimed is out of reach of the other sensors' clusters, which are
    named among the classes left and confirmed only if that name is stable too. When two
    clusters want one class about equally (the Nikon D70 and D70s to a classifier that cannot
    tell them apart), neither is sure and neither is used. ``linked`` (k, k): clusters whose
    fingerprints link (two parts of one sensor), which may share a class and do not compete."""
    k_cl = len(usable)
    evidence = cluster_evidence(members, probs, k_cl)
    drawn = bootstrap_evidence(members, probs, k_cl, draws, seed)
    names = _best_classes(evidence)
    conf = _stability(drawn, names)
    if not one_per_class:
        return names, conf
    n_classes = evidence.shape[1]
    link = np.zeros((k_cl, k_cl), bool) if linked is None else np.asarray(linked, bool)
    holder = np.full(n_classes, -1)  # the cluster that claimed each class
    todo = usable & (names >= 0)
    while todo.any():
        cands = np.flatnonzero(todo)
        # the classes each candidate may still take: unclaimed, or claimed by a part of its own sensor
        free = (holder < 0)[None, :] | ((holder >= 0)[None, :] & link[np.ix_(cands, np.maximum(holder, 0))])
        names[cands] = np.where(free.any(axis=1), np.where(free, evidence[cands], -np.inf).argmax(axis=1), -1)
        pick, margin = _free_best(np.where(free[None], drawn[:, cands], -np.inf))  # (draws, candidates)
        # In each draw a candidate keeps its class only against every candidate of another sensor
        # that wants the same class less clearly: two clusters that both look like one class
        # (the D70 and the D70s to a classifier that cannot tell them apart) hold it each in
        # about half the draws, so neither is sure, and neither pushes the other off it.
        wins = np.ones_like(pick, dtype=bool)
        for i, c in enumerate(cands):
            rivals = np.flatnonzero(~link[c, cands] & (cands != c))
            if len(rivals):
                clearer = margin[:, rivals] > margin[:, [i]] + 1e-9
                wins[:, i] = ~((pick[:, rivals] == pick[:, [i]]) & clearer).any(axis=1)
        conf[cands] = np.where(names[cands] >= 0, ((pick == names[cands][None]) & wins).mean(axis=0), 0.0)
        _, full_margin = _free_best(np.where(free, evidence[cands], -np.inf)[None])
        order = np.lexsort((-full_margin[0], -conf[cands]))  # surest first; ties: the clearer preference
        won = int(cands[order[0]])
        if names[won] < 0 or conf[won] < threshold:
            break  # the rest keep their provisional names and confidences: not used
        if holder[names[won]] < 0:  # else a part of the holder's own sensor (linked)
            holder[names[won]] = won
        todo[won] = False
    return names, conf


def _free_best(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., classes) -> the best class and its lead over the second best (inf: the only finite one)."""
    best = values.argmax(axis=-1)
    top = np.take_along_axis(values, best[..., None], axis=-1)[..., 0]
    second = np.where(np.arange(values.shape[-1]) == best[..., None], -np.inf, values).max(axis=-1)
    with np.errstate(invalid="ignore"):
        return best, np.where(np.isfinite(second), top - second, np.inf)


def _as_bases(probs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(probs, np.ndarray) and probs.ndim == 2:
        return [probs]
    return list(probs)


def warp_fingerprint(f: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Where a centre-crop fingerprint's pattern lands in the centre crop of a photo resized by ``scale``.

    The fingerprint is placed at the centre of a blank canvas, the canvas is resized with the
    competition's bicubic resize and the centre crop of the original size is taken, exactly as
    the test crops were made; returns the pattern and the mask of pixels it covers."""
    h, w = f.shape
    ch, cw = _CANVAS * h, _CANVAS * w
    canvas = np.zeros((ch, cw), np.float32)
    cover = np.zeros((ch, cw), np.float32)
    y0, x0 = (ch - h) // 2 // 2 * 2, (cw - w) // 2 // 2 * 2
    canvas[y0:y0 + h, x0:x0 + w] = f
    cover[y0:y0 + h, x0:x0 + w] = 1.0
    rc = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    rv = cv2.resize(cover, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    oy, ox = (rc.shape[0] - h) // 2 // 2 * 2, (rc.shape[1] - w) // 2 // 2 * 2
    mask = rv[oy:oy + h, ox:ox + w] > 0.999
    pattern = np.where(mask, rc[oy:oy + h, ox:ox + w], 0.0).astype(np.float32)
    return pattern, mask


def _window(max_shift: int) -> np.ndarray:
    return np.r_[0:max_shift + 1, -max_shift:0]


def score_against(r: np.ndarray, shape: tuple[int, int], fingerprints: np.ndarray, manip: np.ndarray,
                  members: np.ndarray, unalt_index: np.ndarray, s: PrnuClusterConfig) -> tuple[np.ndarray, np.ndarray]:
    """z-like scores (n, k) of every crop against every fingerprint, and the scale of each crop's best.

    ``fingerprints`` (k, h*w) are sums of unit residuals; a crop's own residual is left out of
    its cluster's fingerprint. ``_manip`` crops are also scored against fingerprints resampled
    like a resized photo, the best of +-max_shift circular shifts (an FFT cross-correlation)."""
    n, k = len(r), len(fingerprints)
    d = r.shape[1]
    own = np.full(n, -1, dtype=np.int64)
    own[unalt_index] = members
    raw = np.zeros((n, k))
    for i in range(n):
        f = fingerprints
        if own[i] >= 0:
            f = fingerprints.copy()
            f[own[i]] -= r[i]
        raw[i] = (f @ r[i]) / np.maximum(np.linalg.norm(f, axis=1), 1e-12) * np.sqrt(d)
    best_scale = np.ones(n)
    todo = np.flatnonzero(manip == 1)
    if not s.scales or not len(todo):
        return raw, best_scale
    h, w = shape
    pats = np.stack([warp_fingerprint(fingerprints[c].reshape(h, w), sc)[0]
                     for sc in s.scales for c in range(k)])  # (S*k, h, w), scale-major
    norms = np.linalg.norm(pats.reshape(len(pats), -1), axis=1)
    spec = np.conj(sfft.rfft2(pats))
    win = _window(s.max_shift)
    for j in todo:
        q = r[j].reshape(h, w)
        xc = sfft.irfft2(sfft.rfft2(q)[None] * spec, s=(h, w))
        best = xc[:, win % h][:, :, win % w].reshape(len(pats), -1).max(axis=1)
        vals = (best / np.maximum(norms, 1e-12) * np.sqrt(d)).reshape(len(s.scales), k)
        top = vals.max(axis=1)
        if top.max() > raw[j].max():
            best_scale[j] = s.scales[int(top.argmax())]
        raw[j] = np.maximum(raw[j], vals.max(axis=0))
    return raw, best_scale


@dataclass
class Structure:
    """What the clustering finds from the residuals alone, before any class probability:
    computed once per blend run and shared by every ``+prnu`` strategy."""

    members: np.ndarray  # (n_unalt,) cluster of each unaltered crop; -1: in no cluster of min_cluster_size
    coherence: np.ndarray  # (k,) mean within-cluster pairwise z-score
    sizes: np.ndarray  # (k,)
    ok: np.ndarray  # (k,) coherent, large enough, and (balanced test) not larger than a class's share
    z: np.ndarray  # (n, k) standardised best score of each crop against each fingerprint (-inf: unusable)
    scale: np.ndarray  # (n,) resize factor of the best match (1.0: none)
    refused: dict[str, int] = field(default_factory=dict)  # clusters found but not used, by reason
    skipped: str = ""  # why the step changes nothing at all ("": it applies)
    one_per_class: bool = False  # one device per class in the test: names claimed (``claim_names``)
    linked: np.ndarray | None = None  # (k, k) clusters whose cross links reach min_cluster_z: one sensor


def cluster_structure(residuals: np.ndarray, manip: np.ndarray, k: int,
                      s: PrnuClusterConfig | None = None, balanced: bool = False,
                      one_device: bool = False) -> Structure:
    """Cluster the unaltered crops into sensor groups and score every crop against every usable
    group's fingerprint (``residuals`` (n, h, w) post-processed noise residuals, ``manip`` (n,),
    ``k`` classes; ``balanced``: the test has as many crops of every class, so a cluster larger than
    ``max_size_ratio`` times a class's share holds more than one class's device and is refused;
    ``one_device``: the test holds one device of each class (implied by ``balanced``), so the
    names are claimed one class per sensor)."""
    s = s or PrnuClusterConfig()
    n = len(residuals)
    shape = residuals.shape[1:]
    r = normalise(residuals)
    unalt = np.flatnonzero(manip == 0)
    zu = pairwise_z(r[unalt])
    if balanced and k:
        # A declared balanced test is the competition's design: one device per class, so k
        # clusters; a cluster that nonetheless holds two devices is refused below (one_sensor).
        found = spectral_clusters(zu, k, s.seed)
        sizes_all = np.bincount(found, minlength=k)
        keep = np.flatnonzero(sizes_all >= s.min_cluster_size)
        remap = np.full(len(sizes_all), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        members = remap[found]
        n_clusters = len(keep)
    else:
        members, n_clusters = np.full(len(unalt), -1, dtype=np.int64), 0
        while True:
            # Crops left out are clustered again among themselves: fewer pairs, a lower Bonferroni
            # bound, so a device whose links were too weak to stand out among all pairs is found next.
            rest = np.flatnonzero(members < 0)
            found = agglomerate(zu[np.ix_(rest, rest)], s.min_cluster_z, s.merge_z)
            new = np.bincount(found, minlength=1) >= s.min_cluster_size  # numbered biggest first
            if not new.any():
                break
            members[rest[new[found]]] = n_clusters + found[new[found]]
            n_clusters += int(new.sum())
    sizes = np.bincount(members[members >= 0], minlength=n_clusters)
    coherence = np.zeros(n_clusters)
    single = np.ones(n_clusters, dtype=bool)
    cross = np.zeros((n_clusters, n_clusters))
    for c in range(n_clusters):
        m = members == c
        block = zu[np.ix_(m, m)]
        coherence[c] = block.sum() / (m.sum() * (m.sum() - 1))
        single[c] = one_sensor(block, s.seed)
        for d in range(c):
            cross[c, d] = cross[d, c] = zu[np.ix_(m, members == d)].mean()
    # two clusters whose cross links are as strong as a coherent cluster's own are one sensor
    linked = cross >= s.min_cluster_z
    one = bool(balanced and k) or one_device
    ok = coherence >= s.min_cluster_z
    refused = {"incoherent": int((~ok).sum()), "two sensors": int((ok & ~single).sum())}
    ok &= single
    if balanced and k:
        too_big = sizes > s.max_size_ratio * len(unalt) / k
        refused["larger than a class's share"] = int((ok & too_big).sum())
        ok &= ~too_big
    refused = {why: c for why, c in refused.items() if c}
    clustered = float(sizes[ok].sum() / max(len(unalt), 1))
    skipped = ""
    if clustered < s.min_clustered:
        # One sensor per class means most crops should fall in a usable cluster when the noise is
        # readable; a few small groups are what chance finds among many weak correlations.
        skipped = (f"only {clustered:.0%} of the unaltered test crops fall in a coherent sensor cluster "
                   f"(blend.prnu.min_clustered {s.min_clustered:.0%}): the sensor noise is too weak to trust")
    if skipped or not ok.any():
        return Structure(members, coherence, sizes, np.zeros(n_clusters, bool), np.full((n, n_clusters), -np.inf),
                         np.ones(n), refused, skipped or "no coherent sensor cluster", one, linked)
    fingerprints = np.stack([r[unalt][members == c].sum(axis=0) for c in range(n_clusters)])
    raw, scale = score_against(r, shape, fingerprints, manip, members, unalt, s)
    # Most (crop, cluster) pairs are unrelated: their spread is the noise. _manip crops are the
    # best of many trials (shifts, scales), so their noise sits higher and is narrower:
    # standardise each half by its own null (median and MAD of the scores that are not a row's best).
    z = np.zeros_like(raw)
    for half in (0, 1):
        rows = np.flatnonzero(manip == half)
        if not len(rows):
            continue
        block = raw[rows][:, ok]
        null = np.sort(block, axis=1)[:, :-1] if block.shape[1] > 1 else block
        z[rows] = (raw[rows] - float(np.median(null))) / _robust_sd(null)
    z[:, ~ok] = -np.inf
    if z.shape != (n, n_clusters):
        raise DataError(f"sensor-cluster scores of shape {z.shape}, expected {(n, n_clusters)}")
    return Structure(members, coherence, sizes, ok, z, scale, refused, "", one, linked)


def _accept(z: np.ndarray, ok: np.ndarray, names: np.ndarray, s: PrnuClusterConfig) -> tuple[np.ndarray, np.ndarray]:
    """Crops whose best usable cluster reaches ``accept_z`` and beats, by ``margin_z``, the best
    cluster of ANOTHER class (two devices of one class do not compete); returns (accepted, best)."""
    n = len(z)
    if not ok.any():
        return np.zeros(n, bool), np.zeros(n, np.int64)
    zz = np.where(ok[None, :], z, -np.inf)
    best = zz.argmax(axis=1)
    top = zz[np.arange(n), best]
    rival = np.where(names[None, :] != names[best][:, None], zz, -np.inf).max(axis=1)
    with np.errstate(invalid="ignore"):  # -inf - -inf: no usable cluster at all
        margin = np.where(np.isfinite(rival), top - rival, np.inf)
    return np.isfinite(top) & (top >= s.accept_z) & (margin >= s.margin_z), best


def decide(st: Structure, manip: np.ndarray, probs: np.ndarray | Sequence[np.ndarray],
           s: PrnuClusterConfig | None = None) -> ClusterResult:
    """Name the clusters by ``probs`` ((n, k) rows of one base, or a list of them: every base
    of the blend, so the names do not depend on which strategy asks) and decide which crops they
    confirm. A cluster is used only when its name is stable (``naming_confidence`` at least
    ``name_confidence``)."""
    s = s or PrnuClusterConfig()
    bases = _as_bases(probs)
    n = len(bases[0])
    unalt = np.flatnonzero(manip == 0)
    k_cl = len(st.ok)
    info: dict = {"applied": False, "clusters": int(k_cl), "coherent_clusters": int(st.ok.sum()),
                  "cluster_sizes": st.sizes.tolist(), "cluster_z": np.round(st.coherence, 2).tolist(),
                  "clustered_unalt": int(st.ok[st.members[st.members >= 0]].sum()), "refused": dict(st.refused),
                  "one_device_per_class": st.one_per_class}
    if st.skipped or not st.ok.any():
        info.update(skipped=st.skipped or "no coherent sensor cluster", usable_clusters=0, accepted=0,
                    accepted_unalt=0, accepted_manip=0)
        return ClusterResult(st.members, np.full(k_cl, -1), st.ok, st.coherence, st.z, st.scale,
                             np.zeros(n, bool), np.full(n, -1, np.int64), info)

    def named(voters: np.ndarray, rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names, conf = claim_names(voters, rows, st.ok, s.name_confidence, s.name_draws, s.seed,
                                  st.one_per_class, st.linked)
        return names, conf, st.ok & (names >= 0) & (conf >= s.name_confidence)

    names, conf, ok = named(st.members, [b[unalt] for b in bases])
    accepted, best = _accept(st.z, ok, names, s)
    # The manipulated crops a cluster's fingerprint confirms are photos of that device too:
    # their votes join the unaltered members' in a second naming (about 1.7x the votes).
    voters = np.full(n, -1, dtype=np.int64)
    voters[unalt] = st.members
    confirmed = accepted & (manip == 1)
    voters[confirmed] = best[confirmed]
    names, conf, ok = named(voters, bases)
    accepted, best = _accept(st.z, ok, names, s)
    label = np.where(accepted, names[best], -1)
    # Agglomerative membership uses every pairwise link at once, so it is surer than any single
    # z-score: an unaltered crop in a usable cluster takes its name unless it barely
    # correlates with that cluster's fingerprint at all.
    own = st.members
    inside = own >= 0
    own_z = np.where(inside, st.z[unalt, np.maximum(own, 0)], -np.inf)
    by_member = inside & ok[np.maximum(own, 0)] & (own_z >= s.member_z)
    accepted[unalt[by_member]] = True
    label[unalt[by_member]] = names[own[by_member]]
    unstable = int((st.ok & ~ok).sum())
    if unstable:
        info["refused"]["name not stable"] = unstable
    info.update(applied=bool(ok.any()), usable_clusters=int(ok.sum()), names=names.tolist(),
                naming_confidence=np.round(conf, 3).tolist(), accepted=int(accepted.sum()),
                accepted_unalt=int(accepted[manip == 0].sum()), accepted_manip=int(accepted[manip == 1].sum()))
    if not ok.any():
        info["skipped"] = "no coherent cluster has a stable name"
    return ClusterResult(own, names, ok, st.coherence, st.z, st.scale, accepted, label, info)


def cluster_test(residuals: np.ndarray, manip: np.ndarray, probs: np.ndarray | Sequence[np.ndarray],
                 s: PrnuClusterConfig | None = None, balanced: bool = False, one_device: bool = False) -> ClusterResult:
    """Cluster test crops by sensor pattern and decide which predictions the clusters confirm.

    ``residuals`` (n, h, w) post-processed noise residuals of the test crops, ``manip`` (n,) their
    0/1 flag, ``probs`` (n, k) the class probabilities (rows in the same order), or a list of
    them, one per base; ``balanced``, ``one_device``: see ``cluster_structure``."""
    k = _as_bases(probs)[0].shape[1]
    return decide(cluster_structure(residuals, manip, k, s, balanced, one_device), manip, probs, s)


def confirm_rows(probs: np.ndarray, rows: np.ndarray, labels: np.ndarray, floor: float) -> np.ndarray:
    """``probs`` with ``rows`` (near) one-hot on ``labels`` (class indices, one per row) at the
    floor; every other row unchanged. The sensor-noise steps' decision (``+prnu``, ``+match``)."""
    out = np.array(probs, dtype=np.float64, copy=True)
    out[rows] = floor
    out[rows, labels] = 1.0 - floor * (out.shape[1] - 1)
    return out


def apply_clusters(probs: np.ndarray, result: ClusterResult, floor: float = PROB_FLOOR) -> np.ndarray:
    """Accepted crops become (near) one-hot on their cluster's class; the others are unchanged."""
    rows = np.flatnonzero(result.accepted)
    return confirm_rows(probs, rows, result.label[rows], floor)


# ------------------------------------------------------------------ the level-2 step

_RESIDUAL_VERSION = 1  # bump when the residual definition changes, so a cache is not reused


def _residual_job(path: str) -> np.ndarray | str:
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return exc.reason
    return prnu.query_residual(img)[0].astype(np.float16)


def files_stamp(test: pd.DataFrame) -> list[list]:
    """What a cache over the test files is valid for: each file's name, size and modification time."""
    return [[f, Path(p).stat().st_size, Path(p).stat().st_mtime_ns]
            for f, p in zip(test["fname"], test["path"], strict=True)]


def write_stamped(cache: Path, stamp: dict, **arrays: np.ndarray) -> None:
    """``arrays`` to ``cache`` (.npz, atomically), then ``stamp`` to its ``.json`` sidecar: what
    ``read_stamped`` checks before reusing them."""
    cache.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a temp name
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy types its keywords as allow_pickle

    write_atomic(cache, save)
    write_json(cache.with_suffix(".json"), stamp)


def rows_of_test(table: pd.DataFrame, fnames: pd.Series) -> np.ndarray:
    """The positions of the test rows of ``table`` for ``fnames``, in that order; a DataError when
    the table lacks any of them."""
    rows = np.flatnonzero((table["split"] == "test").to_numpy())
    by_name = pd.Series(rows, index=table["fname"].to_numpy()[rows])
    missing = sorted(set(fnames) - set(by_name.index))
    if missing:
        raise DataError(f"the level-2 table has no rows for {len(missing)} test file(s), e.g. {missing[:3]}")
    return by_name.loc[fnames].to_numpy()


def read_stamped(cache: Path, stamp: dict) -> dict[str, np.ndarray] | None:
    """The arrays of ``cache`` (.npz) when its ``.json`` sidecar equals ``stamp``; None otherwise."""
    meta = cache.with_suffix(".json")
    if not (cache.is_file() and meta.is_file() and json.loads(meta.read_text()) == stamp):
        return None
    with np.load(cache, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_residuals(data_dir: Path, cache: Path, workers: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Post-processed noise residuals of every test crop (fname order), cached in ``cache``.

    The cache is reused when the test files (names, sizes, modification times) and the residual
    definition are unchanged; residuals are stored as float16 (2640 crops of 512 px: 1.4 GB)."""
    test = scan_test(data_dir)
    stamp = {"version": _RESIDUAL_VERSION, "settings": asdict(prnu.PrnuSettings()), "files": files_stamp(test)}
    cached = read_stamped(cache, stamp)
    if cached is not None:
        stage_log("blend", f"read {len(test)} test residuals from {cache}")
        return test, cached["residuals"]
    t0 = time.perf_counter()
    out = list(parallel_map(_residual_job, test["path"].tolist(), workers, "test residuals"))
    bad = [(f, r) for f, r in zip(test["fname"], out, strict=True) if isinstance(r, str)]
    if bad:
        raise DataError(f"{len(bad)} test crop(s) cannot be read for PRNU clustering, e.g. {bad[:3]}")
    shapes = sorted({r.shape for r in out})  # type: ignore[union-attr]
    if len(shapes) != 1:
        raise DataError(f"PRNU clustering needs test crops of one size; found {shapes[:5]}")
    residuals = np.stack(out)
    write_stamped(cache, stamp, residuals=residuals)
    stage_log("blend", f"wrote {len(test)} test residuals ({shapes[0][1]}x{shapes[0][0]}) to {cache} "
                       f"in {time.perf_counter() - t0:.1f} s")
    return test, residuals


def refine_table(table: pd.DataFrame, classes: list[str], data_dir: Path, cache: Path, settings: PrnuClusterConfig,
                 floor: float, structures: dict[str, Structure] | None = None,
                 evidence: Sequence[pd.DataFrame] = (), balanced: bool = False, one_device: bool = False,
                 ) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """The ``+prnu`` step on a level-2 table: test rows confirmed by their sensor cluster become
    (near) one-hot on the cluster's class; OOF rows and unconfirmed test rows are unchanged.

    ``evidence``: the level-2 tables of every base in the blend; the clusters are named by all of
    them (default: by ``table`` alone), so every ``+prnu`` strategy confirms the same names.
    ``balanced``: the test is declared balanced (``blend.balanced_test``); ``one_device``: it holds
    one device of each class (``one_device_per_class``).
    OOF rows are left alone on purpose: they are photos of the TRAINING devices, so clustering
    them would not measure what clustering does on the unseen test device; the local CV of a
    ``+prnu`` strategy is its base's. Returns the table, a summary (``applied``: whether any
    cluster was used; ``skipped``: why not), and one report row per test crop (cluster, best
    z-score, scale, accepted, class) for ``oof/blend/<strategy>.prnu.csv``."""
    test, residuals = test_residuals(data_dir, cache, settings.workers or (os.cpu_count() or 1))

    order = rows_of_test(table, test["fname"])
    probs = table[classes].to_numpy(dtype=np.float64)[order]
    bases = [t[classes].to_numpy(dtype=np.float64)[rows_of_test(t, test["fname"])] for t in evidence] or [probs]
    manip = test["manip"].to_numpy().astype(int)
    k = len(classes)
    t0 = time.perf_counter()
    if (manip == 0).sum() < 2 * k:
        reason = f"PRNU clustering needs at least {2 * k} unaltered test crops, has {(manip == 0).sum()}"
        stage_log("blend", f"{reason}: nothing changed")
        return table, {"applied": False, "skipped": reason}, pd.DataFrame()
    structures = {} if structures is None else structures
    key = f"{cache}|balanced={balanced}|one_device={one_device}"
    if key not in structures:
        structures[key] = cluster_structure(residuals.astype(np.float32), manip, k, settings, balanced, one_device)
    res = decide(structures[key], manip, bases, settings)
    refined = apply_clusters(probs, res, floor)
    out = table.copy()
    out.loc[out.index[order], classes] = refined
    report = pd.DataFrame({"fname": test["fname"].to_numpy(), "manip": manip,
                           "cluster": -1, "best_z": np.round(res.z.max(axis=1, initial=-np.inf), 3),
                           "scale": res.scale, "accepted": res.accepted,
                           "class": [classes[c] if c >= 0 else "" for c in res.label],
                           "before": [classes[c] for c in probs.argmax(axis=1)],
                           "after": [classes[c] for c in refined.argmax(axis=1)]})
    report.loc[manip == 0, "cluster"] = res.cluster_of_unalt
    info = dict(res.info, seconds=round(time.perf_counter() - t0, 2),
                changed=int((report["before"] != report["after"]).sum()))
    if "names" in info:
        info["names"] = [classes[c] if c >= 0 else "" for c in info["names"]]
    truth = solution_labels(data_dir)
    if truth is not None and set(test["fname"]) <= set(truth.index):
        y = truth.loc[test["fname"]].to_numpy()
        clusters = res.cluster_of_unalt
        inside = clusters >= 0
        yu = y[manip == 0][inside]
        info["purity"] = round(float(sum(pd.Series(yu[clusters[inside] == c]).value_counts().iloc[0]
                                         for c in np.unique(clusters[inside])) / inside.sum()), 4) \
            if inside.any() else None
        acc = report["accepted"].to_numpy()
        info["accepted_precision"] = round(float((report["class"].to_numpy()[acc] == y[acc]).mean()), 4) \
            if acc.any() else None
    if not info["applied"]:
        stage_log("blend", f"PRNU clustering: {info['skipped']}: nothing changed ({info['clusters']} clusters of "
                           f"{settings.min_cluster_size}+ crops, {info['coherent_clusters']} coherent"
                           + (f", refused: {info['refused']}" if info["refused"] else "") + ")")
        return table, info, report
    stage_log("blend", f"PRNU clustering: {info['usable_clusters']}/{info['clusters']} clusters used "
                       f"(refused: {info['refused'] or 'none'}), "
                       f"{info['accepted_unalt']}/{int((manip == 0).sum())} unaltered and {info['accepted_manip']}/"
                       f"{int((manip == 1).sum())} manipulated crops confirmed, {info['changed']} predictions changed"
                       + (f"; against the solution: cluster purity {info['purity']}, confirmed precision "
                          f"{info['accepted_precision']}" if "purity" in info else "") + f" ({info['seconds']} s)")
    return out, info, report
