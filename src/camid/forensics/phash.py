"""Perceptual hashes (pHash) of images and an index that finds near-equal ones: how
``camid filter-external`` recognises a resized, recompressed or rotated copy of a photo."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image


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
