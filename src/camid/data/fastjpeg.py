"""Decode only the part of a JPEG that a training crop needs, with the same pixels.

Why: a training sample is a 960 crop of a 12-megapixel photo; decoding the whole
photo (what the winners did) spends ~90% of the sample time on pixels that are
thrown away.

How: a baseline JPEG is one Huffman-coded bit stream, so libjpeg must entropy-decode
every MCU before the one it wants -- unless the stream has restart markers. Each
restart interval starts byte-aligned with its DC predictors reset, so it decodes on
its own. With a marker every ``R`` MCUs and ``R`` dividing the MCUs of a row, the
intervals covering any rectangle can be cut out of the coded data and wrapped in a
small valid JPEG (same tables, the rectangle's size in the SOF, markers renumbered),
which Pillow decodes as usual. The DCT coefficients are the same, so every pixel
equals the full decode, except where chroma upsampling looks at a neighbour outside
the rectangle: the rectangle gets a ``MARGIN`` on each side, trimmed after decoding.

Most camera JPEGs have no restart markers. They are rewritten ONCE, losslessly, with
a marker on every MCU: libjpeg's coefficient API (``jpeg_read_coefficients`` ->
``jpeg_write_coefficients``, no pixel is decoded or re-quantised), called through
ctypes on the libjpeg-turbo that ships inside Pillow's wheel. The copy goes to a
cache folder (``DecodeCache``, about the size of the originals) and is only kept if
its full decode equals the original's. Files that cannot take this path (not a JPEG,
progressive, arithmetic-coded, 12-bit, multi-scan, no cache configured, libjpeg not
found) are decoded in full, exactly as before.

Entry point: ``open_image(path)`` returns either a decoded array (the fallback) or a
``LazyCrop``: an undecoded rectangle that behaves like an ``HxWx3`` uint8 array for
``crops.random_crop`` (``.shape``, 2-D slicing) and decodes its pixels only when
numpy asks for them (``np.asarray``). Slicing a ``LazyCrop`` gives a smaller
``LazyCrop``, so a sample without manipulation decodes just its final 480 crop.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..util.io import atomic_path
from .images import decode_bytes, read_image, too_large

# Pixels decoded beyond the wanted rectangle on each side (then trimmed): chroma
# upsampling reads one chroma sample (at most 4 px at 4:1:1) past a pixel.
MARGIN = 8
CACHE_ENV = "CAMID_DECODE_CACHE"  # folder for restart-marker copies; unset/"off" = none
_SOF_SEQUENTIAL = (0xC0, 0xC1)  # baseline / extended sequential, Huffman coded
_SOF_OTHER = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical",
              0xC7: "hierarchical", 0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded",
              0xCB: "arithmetic-coded", 0xCD: "arithmetic-coded", 0xCE: "arithmetic-coded",
              0xCF: "arithmetic-coded"}
# Header segments copied into region JPEGs: everything the decoder (and Pillow's mode
# choice) reads. APP1-APP13/APP15 (EXIF, ICC, MPF, ...) and COM do not change pixels.
_KEEP_APP = (0xE0, 0xEE)  # JFIF, Adobe (colour transform)


class Unsupported(ValueError):
    """This file cannot be region-decoded; the caller decodes it in full."""


class NoRestartMarkers(Unsupported):
    """A baseline JPEG without restart markers usable for region decoding: its lossless
    restart-marker copy (``DecodeCache``) can be."""


# ---------------------------------------------------------------- layout and index

@dataclass(frozen=True)
class Layout:
    """Where each MCU row of a restart-marked baseline JPEG starts in the file."""

    width: int
    height: int
    mcu_w: int
    mcu_h: int
    mcus_x: int
    mcus_y: int
    interval: int  # restart interval in MCUs; divides mcus_x
    head: bytes  # SOI .. SOS (inclusive), kept segments only
    sof_at: int  # offset of the SOF marker inside ``head``
    row_starts: np.ndarray  # file offset of each MCU row's first coded byte; [-1] = end of the scan

    @property
    def intervals_per_row(self) -> int:
        return self.mcus_x // self.interval


def _segments(data: bytes | memoryview):
    """(marker, start, end) of each header segment up to and including SOS."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise Unsupported("not a JPEG")
    i = 2
    while True:
        while i < len(data) and data[i] == 0xFF and i + 1 < len(data) and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > len(data) or data[i] != 0xFF:
            raise Unsupported("malformed JPEG header")
        marker = data[i + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        end = i + 2 + length
        if length < 2 or end > len(data):
            raise Unsupported("truncated JPEG header")
        yield marker, i, end
        if marker == 0xDA:
            return
        if marker == 0xD9:
            raise Unsupported("no image data")
        i = end


def parse_layout(data: bytes) -> Layout:
    """Check that ``data`` can be region-decoded and index its MCU rows.

    Raises ``Unsupported`` with the reason (no restart markers, progressive, ...).
    """
    keep: list[bytes] = []
    sof = dri = None
    sof_at = 0
    comps: list[tuple[int, int]] = []
    for marker, start, end in _segments(data):
        seg = bytes(data[start:end])
        if marker in _SOF_OTHER:
            raise Unsupported(f"{_SOF_OTHER[marker]} JPEG")
        if marker == 0xCC:
            raise Unsupported("arithmetic-coded JPEG")
        if marker in _SOF_SEQUENTIAL:
            precision, height, width, n = struct.unpack(">BHHB", seg[4:10])
            if precision != 8:
                raise Unsupported(f"{precision}-bit JPEG")
            if height == 0 or width == 0:
                raise Unsupported("image size given by a DNL marker")
            comps = [(seg[11 + 3 * k] >> 4, seg[11 + 3 * k] & 15) for k in range(n)]
            if n not in (1, 3, 4) or any(h < 1 or v < 1 for h, v in comps):
                raise Unsupported("unusual component layout")
            sof = (width, height, n)
            sof_at = sum(len(s) for s in keep) + 2
        elif marker == 0xDD:
            dri = struct.unpack(">H", seg[4:6])[0]
        elif marker == 0xDA:
            if sof is None:
                raise Unsupported("no frame header before the scan")
            ns = seg[4]
            ss, se, a = seg[5 + 2 * ns], seg[6 + 2 * ns], seg[7 + 2 * ns]
            if ns != sof[2] or (ss, se, a) != (0, 63, 0):
                raise Unsupported("multi-scan JPEG")
            data_start = end
        elif 0xE0 <= marker <= 0xEF and marker not in _KEEP_APP or marker == 0xFE:
            continue
        keep.append(seg)
    width, height, n = sof  # type: ignore[misc]
    if n == 1:
        mcu_w = mcu_h = 8  # a single-component scan is not interleaved: 1 block per MCU
    else:
        mcu_w, mcu_h = 8 * max(h for h, _ in comps), 8 * max(v for _, v in comps)
    mcus_x, mcus_y = -(-width // mcu_w), -(-height // mcu_h)
    if not dri:
        raise NoRestartMarkers("no restart markers")
    if mcus_x % dri:
        raise NoRestartMarkers(f"restart interval {dri} does not divide the {mcus_x} MCUs of a row")
    head = b"\xff\xd8" + b"".join(keep)
    arr = np.frombuffer(data, dtype=np.uint8)
    markers = _markers(arr, data_start)
    codes = arr[markers + 1]
    is_rst = (codes >= 0xD0) & (codes <= 0xD7)
    other = np.flatnonzero(~is_rst)
    if not len(other) or codes[other[0]] != 0xD9:
        raise Unsupported("scan not followed by EOI (multi-scan or truncated)")
    scan_end = int(markers[other[0]])
    rst = markers[: other[0]]
    ipr = mcus_x // dri
    if len(rst) != ipr * mcus_y - 1:
        raise Unsupported(f"{len(rst)} restart markers, expected {ipr * mcus_y - 1}")
    row_starts = np.empty(mcus_y + 1, dtype=np.int64)
    row_starts[0] = data_start
    row_starts[1:-1] = rst[ipr - 1::ipr][:mcus_y - 1] + 2  # the marker ending a row's last interval
    row_starts[-1] = scan_end
    return Layout(width, height, mcu_w, mcu_h, mcus_x, mcus_y, dri, head, sof_at, row_starts)


def _markers(arr: np.ndarray, start: int = 0) -> np.ndarray:
    """Positions (>= start) of markers in entropy-coded data: 0xFF not followed by 0x00 or fill."""
    ff = np.flatnonzero(arr[start:-1] == 0xFF) + start
    nxt = arr[ff + 1]
    return ff[(nxt != 0x00) & (nxt != 0xFF)]


def region_jpeg(layout: Layout, chunk: bytes, r0: int, r1: int, j0: int, j1: int) -> bytes:
    """A JPEG of MCU rows ``r0:r1`` and restart intervals ``j0:j1`` of each row.

    ``chunk`` is the file from ``row_starts[r0]`` to ``row_starts[r1]``.
    """
    ipr = layout.intervals_per_row
    arr = np.frombuffer(chunk, dtype=np.uint8)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    rst = ff[(arr[ff + 1] & 0xF8) == 0xD0]  # RST0..7 (stuffed 0xFF00 never matches)
    expected = (r1 - r0) * ipr - (1 if r1 == layout.mcus_y else 0)
    if len(rst) != expected:
        raise Unsupported(f"file changed or damaged: {len(rst)} restart markers where {expected} expected")
    starts = np.concatenate(([0], rst + 2))  # coded bytes of interval g: starts[g]:ends[g]
    ends = np.concatenate((rst, [len(chunk)]))
    rows = np.arange(r1 - r0) * ipr
    first, last = starts[rows + j0], ends[rows + j1 - 1]
    view = memoryview(chunk)
    body = bytearray(b"\xff\xd0".join(view[s:e] for s, e in zip(first.tolist(), last.tolist(), strict=True)))
    # Renumber every marker in order (RST0, RST1, ... mod 8), as a fresh stream must be.
    out = np.frombuffer(body, dtype=np.uint8)
    ff = np.flatnonzero(out[:-1] == 0xFF)
    pos = ff[(out[ff + 1] & 0xF8) == 0xD0] + 1
    out[pos] = 0xD0 + (np.arange(len(pos)) & 7)
    width = min(layout.width - j0 * layout.interval * layout.mcu_w, (j1 - j0) * layout.interval * layout.mcu_w)
    height = min(layout.height - r0 * layout.mcu_h, (r1 - r0) * layout.mcu_h)
    head = bytearray(layout.head)
    head[layout.sof_at + 5:layout.sof_at + 9] = struct.pack(">HH", height, width)
    return bytes(head) + bytes(body) + b"\xff\xd9"


def decode_region(path: str | Path, layout: Layout, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Pixels ``[y:y+h, x:x+w]`` of the photo as uint8 RGB, equal to ``read_image(path)[...]``."""
    if h <= 0 or w <= 0:
        return np.zeros((max(h, 0), max(w, 0), 3), dtype=np.uint8)
    span = layout.interval * layout.mcu_w
    r0 = max(0, y - MARGIN) // layout.mcu_h
    r1 = min(layout.mcus_y, -(-(y + h + MARGIN) // layout.mcu_h))
    j0 = max(0, x - MARGIN) // span
    j1 = min(layout.intervals_per_row, -(-(x + w + MARGIN) // span))
    lo, hi = int(layout.row_starts[r0]), int(layout.row_starts[r1])
    with open(path, "rb") as fh:
        fh.seek(lo)
        chunk = fh.read(hi - lo)
    if len(chunk) != hi - lo:
        raise Unsupported("file shorter than its index")
    arr = decode_bytes(region_jpeg(layout, chunk, r0, r1, j0, j1))
    oy, ox = y - r0 * layout.mcu_h, x - j0 * span
    return arr[oy:oy + h, ox:ox + w]


# ---------------------------------------------------------------- lazy crops

class JpegSource:
    """A region-decodable file (the photo itself or its restart-marker copy)."""

    def __init__(self, path: str | Path, layout: Layout, original: str | Path | None = None):
        self.path, self.layout = str(path), layout
        self.original = str(original or path)

    def region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        try:
            return decode_region(self.path, self.layout, y, x, h, w)
        except (Unsupported, OSError, SyntaxError, ValueError):
            # The copy vanished or was damaged: the original still gives the right pixels
            # (or raises ImageReadError with the reason, as the full-decode path would).
            return np.ascontiguousarray(read_image(self.original)[y:y + h, x:x + w])


class LazyCrop:
    """An undecoded ``h x w`` rectangle at ``(y, x)`` of a JPEG, numpy-like enough for cropping.

    ``shape`` and 2-D slicing (``img[a:b, c:d]``) cost nothing; ``np.asarray(crop)``
    decodes just this rectangle. Any other use goes through ``np.asarray`` first.
    """

    ndim = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, source: JpegSource, y: int, x: int, h: int, w: int):
        self.source, self.y, self.x, self.h, self.w = source, y, x, h, w
        self._pixels: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.h, self.w, 3)

    def __len__(self) -> int:
        return self.h

    def __repr__(self) -> str:
        return f"LazyCrop({self.source.original!r}, y={self.y}, x={self.x}, h={self.h}, w={self.w})"

    def __getitem__(self, key: Any):
        if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key):
            (ys, ye, ystep), (xs, xe, xstep) = key[0].indices(self.h), key[1].indices(self.w)
            if ystep == 1 and xstep == 1:
                return LazyCrop(self.source, self.y + ys, self.x + xs, max(0, ye - ys), max(0, xe - xs))
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.ascontiguousarray(self.source.region(self.y, self.x, self.h, self.w))
        out = self._pixels if dtype is None else self._pixels.astype(dtype, copy=False)
        return out.copy() if copy else out


# ---------------------------------------------------------------- lossless restart-marker copy

class _LibJpeg:
    """ctypes binding of the few libjpeg (v6.2 ABI) calls needed for a lossless transcode.

    libjpeg reports fatal errors through ``error_exit``, which must not return (C code
    uses longjmp). Python cannot longjmp, so this binding is only used on files that
    Pillow (the same libjpeg, with setjmp) has just decoded without error, and it
    refuses any file that raised a warning. Struct sizes are checked against the
    library (jpeg_Create* verify them) before first use.
    """

    VERSION = 62

    def __init__(self, lib: ctypes.CDLL):
        C = ctypes
        b, dim, vp = C.c_int, C.c_uint, C.c_void_p

        class ErrorMgr(C.Structure):
            _fields_ = [("error_exit", vp), ("emit_message", vp), ("output_message", vp),
                        ("format_message", vp), ("reset_error_mgr", vp), ("msg_code", C.c_int),
                        ("msg_parm", C.c_int * 20), ("trace_level", C.c_int), ("num_warnings", C.c_long),
                        ("jpeg_message_table", vp), ("last_jpeg_message", C.c_int),
                        ("addon_message_table", vp), ("first_addon_message", C.c_int),
                        ("last_addon_message", C.c_int)]

        common: list[Any] = [("err", C.POINTER(ErrorMgr)), ("mem", vp), ("progress", vp), ("client_data", vp),
                  ("is_decompressor", b), ("global_state", C.c_int)]
        u8x16 = C.c_ubyte * 16

        class Decompress(C.Structure):  # jpeg_decompress_struct, JPEG_LIB_VERSION 62
            _fields_ = common + [
                ("src", vp), ("image_width", dim), ("image_height", dim), ("num_components", C.c_int),
                ("jpeg_color_space", C.c_int), ("out_color_space", C.c_int), ("scale_num", C.c_uint),
                ("scale_denom", C.c_uint), ("output_gamma", C.c_double), ("buffered_image", b),
                ("raw_data_out", b), ("dct_method", C.c_int), ("do_fancy_upsampling", b),
                ("do_block_smoothing", b), ("quantize_colors", b), ("dither_mode", C.c_int),
                ("two_pass_quantize", b), ("desired_number_of_colors", C.c_int), ("enable_1pass_quant", b),
                ("enable_external_quant", b), ("enable_2pass_quant", b), ("output_width", dim),
                ("output_height", dim), ("out_color_components", C.c_int), ("output_components", C.c_int),
                ("rec_outbuf_height", C.c_int), ("actual_number_of_colors", C.c_int), ("colormap", vp),
                ("output_scanline", dim), ("input_scan_number", C.c_int), ("input_iMCU_row", dim),
                ("output_scan_number", C.c_int), ("output_iMCU_row", dim), ("coef_bits", vp),
                ("quant_tbl_ptrs", vp * 4), ("dc_huff_tbl_ptrs", vp * 4), ("ac_huff_tbl_ptrs", vp * 4),
                ("data_precision", C.c_int), ("comp_info", vp), ("progressive_mode", b), ("arith_code", b),
                ("arith_dc_L", u8x16), ("arith_dc_U", u8x16), ("arith_ac_K", u8x16),
                ("restart_interval", C.c_uint), ("saw_JFIF_marker", b), ("JFIF_major_version", C.c_ubyte),
                ("JFIF_minor_version", C.c_ubyte), ("density_unit", C.c_ubyte), ("X_density", C.c_ushort),
                ("Y_density", C.c_ushort), ("saw_Adobe_marker", b), ("Adobe_transform", C.c_ubyte),
                ("CCIR601_sampling", b), ("marker_list", vp), ("max_h_samp_factor", C.c_int),
                ("max_v_samp_factor", C.c_int), ("min_DCT_scaled_size", C.c_int), ("total_iMCU_rows", dim),
                ("sample_range_limit", vp), ("comps_in_scan", C.c_int), ("cur_comp_info", vp * 4),
                ("MCUs_per_row", dim), ("MCU_rows_in_scan", dim), ("blocks_in_MCU", C.c_int),
                ("MCU_membership", C.c_int * 10), ("Ss", C.c_int), ("Se", C.c_int), ("Ah", C.c_int),
                ("Al", C.c_int), ("unread_marker", C.c_int), ("modules", vp * 11)]

        class Compress(C.Structure):  # jpeg_compress_struct, JPEG_LIB_VERSION 62
            _fields_ = common + [
                ("dest", vp), ("image_width", dim), ("image_height", dim), ("input_components", C.c_int),
                ("in_color_space", C.c_int), ("input_gamma", C.c_double), ("data_precision", C.c_int),
                ("num_components", C.c_int), ("jpeg_color_space", C.c_int), ("comp_info", vp),
                ("quant_tbl_ptrs", vp * 4), ("dc_huff_tbl_ptrs", vp * 4), ("ac_huff_tbl_ptrs", vp * 4),
                ("arith_dc_L", u8x16), ("arith_dc_U", u8x16), ("arith_ac_K", u8x16), ("num_scans", C.c_int),
                ("scan_info", vp), ("raw_data_in", b), ("arith_code", b), ("optimize_coding", b),
                ("CCIR601_sampling", b), ("smoothing_factor", C.c_int), ("dct_method", C.c_int),
                ("restart_interval", C.c_uint), ("restart_in_rows", C.c_int), ("write_JFIF_header", b),
                ("JFIF_major_version", C.c_ubyte), ("JFIF_minor_version", C.c_ubyte),
                ("density_unit", C.c_ubyte), ("X_density", C.c_ushort), ("Y_density", C.c_ushort),
                ("write_Adobe_marker", b), ("next_scanline", dim), ("progressive_mode", b),
                ("max_h_samp_factor", C.c_int), ("max_v_samp_factor", C.c_int), ("total_iMCU_rows", dim),
                ("comps_in_scan", C.c_int), ("cur_comp_info", vp * 4), ("MCUs_per_row", dim),
                ("MCU_rows_in_scan", dim), ("blocks_in_MCU", C.c_int), ("MCU_membership", C.c_int * 10),
                ("Ss", C.c_int), ("Se", C.c_int), ("Ah", C.c_int), ("Al", C.c_int), ("modules", vp * 9),
                ("script_space", vp), ("script_space_size", C.c_int)]

        self.C, self.lib, self.ErrorMgr = C, lib, ErrorMgr
        self.Decompress, self.Compress = Decompress, Compress
        self.libc = C.CDLL(None)
        self.lock = threading.Lock()
        self.failed: list[int] = []
        p = C.POINTER
        sigs = {
            "jpeg_std_error": (p(ErrorMgr), [p(ErrorMgr)]),
            "jpeg_CreateDecompress": (None, [vp, C.c_int, C.c_size_t]),
            "jpeg_CreateCompress": (None, [vp, C.c_int, C.c_size_t]),
            "jpeg_mem_src": (None, [vp, vp, C.c_ulong]),
            "jpeg_mem_dest": (None, [vp, p(vp), p(C.c_ulong)]),
            "jpeg_read_header": (C.c_int, [vp, b]),
            "jpeg_read_coefficients": (vp, [vp]),
            "jpeg_copy_critical_parameters": (None, [vp, vp]),
            "jpeg_write_coefficients": (None, [vp, vp]),
            "jpeg_finish_compress": (None, [vp]),
            "jpeg_destroy_compress": (None, [vp]),
            "jpeg_destroy_decompress": (None, [vp]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.libc.free.argtypes = [vp]

        @C.CFUNCTYPE(None, vp)
        def error_exit(cinfo):  # record, then return (see class doc); callers check `failed`
            err = C.cast(C.c_void_p(cinfo), p(p(ErrorMgr)))[0][0]
            self.failed.append(err.msg_code)

        @C.CFUNCTYPE(None, vp)
        def output_message(cinfo):  # warnings are counted in num_warnings, not printed
            return None

        self._callbacks = (error_exit, output_message)  # keep alive
        for cls, create in ((Decompress, lib.jpeg_CreateDecompress), (Compress, lib.jpeg_CreateCompress)):
            obj, _err = self._new(cls, create)
            if self.failed:
                raise Unsupported(f"libjpeg ABI mismatch (error {self.failed[0]} creating {cls.__name__})")
            (lib.jpeg_destroy_decompress if cls is Decompress else lib.jpeg_destroy_compress)(C.byref(obj))

    def _new(self, cls, create):
        C = self.C
        err = self.ErrorMgr()
        self.lib.jpeg_std_error(C.byref(err))
        err.error_exit = C.cast(self._callbacks[0], C.c_void_p).value
        err.output_message = C.cast(self._callbacks[1], C.c_void_p).value
        # Room to spare: on a size mismatch libjpeg reports it, then clears its own sizeof.
        buf = (C.c_ubyte * max(4096, C.sizeof(cls)))()
        obj = cls.from_buffer(buf)
        obj.err = C.pointer(err)
        obj._keep = (buf, err)
        create(C.byref(obj), self.VERSION, C.sizeof(cls))
        return obj, err

    def add_restart_markers(self, data: bytes, interval: int = 1) -> bytes:
        """The same DCT coefficients re-coded with a restart marker every ``interval`` MCUs."""
        C, lib = self.C, self.lib
        with self.lock:
            self.failed.clear()
            src = (C.c_ubyte * len(data)).from_buffer_copy(data)
            d, derr = self._new(self.Decompress, lib.jpeg_CreateDecompress)
            c, _ = self._new(self.Compress, lib.jpeg_CreateCompress)
            out, size = C.c_void_p(), C.c_ulong(0)
            try:
                lib.jpeg_mem_src(C.byref(d), src, len(data))
                lib.jpeg_read_header(C.byref(d), 1)
                if self.failed or d.progressive_mode or d.arith_code or d.data_precision != 8:
                    raise Unsupported("not a baseline 8-bit JPEG")
                coefs = lib.jpeg_read_coefficients(C.byref(d))
                if self.failed or not coefs or derr.num_warnings:
                    raise Unsupported("libjpeg reported damaged data")
                lib.jpeg_mem_dest(C.byref(c), C.byref(out), C.byref(size))
                lib.jpeg_copy_critical_parameters(C.byref(d), C.byref(c))
                c.restart_interval = interval
                c.restart_in_rows = 0
                lib.jpeg_write_coefficients(C.byref(c), coefs)
                lib.jpeg_finish_compress(C.byref(c))
                if self.failed:
                    raise Unsupported(f"libjpeg error {self.failed[0]}")
                return C.string_at(out, size.value)
            finally:
                lib.jpeg_destroy_compress(C.byref(c))
                lib.jpeg_destroy_decompress(C.byref(d))
                if out.value:
                    self.libc.free(out)


_LIBJPEG: list = []  # [instance or None], resolved once per process


def _library_candidates() -> list[str]:
    import PIL

    pil = Path(PIL.__file__).resolve().parent
    found = sorted(glob.glob(str(pil.parent / "pillow.libs" / "libjpeg*.so*")))  # manylinux wheels
    found += sorted(glob.glob(str(pil / ".dylibs" / "libjpeg*.dylib")))  # macOS wheels
    system = ctypes.util.find_library("jpeg")
    return found + ([system] if system else [])


def libjpeg() -> _LibJpeg | None:
    """The transcoder, or None when no usable libjpeg (v6.2 ABI) is found."""
    if not _LIBJPEG:
        inst = None
        for cand in _library_candidates():
            try:
                lib = ctypes.CDLL(cand)
                if hasattr(lib, "jpeg_write_coefficients"):
                    inst = _LibJpeg(lib)
                    break
            except (OSError, Unsupported):
                continue
        _LIBJPEG.append(inst)
    return _LIBJPEG[0]


def add_restart_markers(data: bytes, interval: int = 1) -> bytes:
    """Lossless copy of a baseline JPEG with a restart marker every ``interval`` MCUs."""
    lj = libjpeg()
    if lj is None:
        raise Unsupported("no usable libjpeg found for the lossless transcode")
    return lj.add_restart_markers(data, interval)


class DecodeCache:
    """Restart-marker copies of photos, keyed by absolute path, size and mtime.

    ``<root>/<k[:2]>/<k>.jpg`` is the copy; ``<k>.full`` records a photo that must be
    decoded in full (with the reason), so the transcode is not retried every epoch.
    Writes are atomic, so DataLoader workers can fill the cache concurrently.
    """

    def __init__(self, root: str | Path, verify: bool = True):
        self.root, self.verify = Path(root), verify

    def key(self, path: str | Path, st: os.stat_result) -> str:
        ident = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
        return hashlib.sha256(ident.encode()).hexdigest()[:40]

    def paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.jpg", folder / f"{key}.full"

    def build(self, path: str | Path, st: os.stat_result, decoded: np.ndarray | None = None) -> Path | None:
        """Write the copy of ``path`` (``decoded``: its full decode, if already at hand)."""
        copy, full = self.paths(self.key(path, st))
        data = Path(path).read_bytes()
        try:
            rst = add_restart_markers(data)
            parse_layout(rst)
            if self.verify:
                original = read_image(path) if decoded is None else decoded
                if not np.array_equal(decode_bytes(rst), original):
                    raise Unsupported("restart-marker copy decodes differently")
        except (Unsupported, OSError, ValueError, SyntaxError, IndexError, struct.error) as exc:
            if libjpeg() is not None:  # a property of the file: remember it
                self._write(full, f"{path}: {exc}\n".encode())
            return None
        return copy if self._write(copy, rst) else None

    @staticmethod
    def _write(path: Path, data: bytes) -> bool:
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return True
        except OSError:  # full or read-only disk: training goes on with full decodes
            return False


def default_cache() -> DecodeCache | None:
    """The cache named by ``$CAMID_DECODE_CACHE`` (unset, empty or ``off``: none)."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return None if root.lower() in ("", "off", "none", "0") else DecodeCache(root)


# ---------------------------------------------------------------- entry point

_FULL = "full"
_INDEX: OrderedDict[tuple, JpegSource | str] = OrderedDict()  # per process, bounded
_INDEX_MAX = 8192


def _remember(key: tuple, value: JpegSource | str) -> None:
    _INDEX[key] = value
    _INDEX.move_to_end(key)
    while len(_INDEX) > _INDEX_MAX:
        _INDEX.popitem(last=False)


def _source(path: str | Path, layout_path: str | Path) -> JpegSource:
    layout = parse_layout(Path(layout_path).read_bytes())
    if too_large(layout.width, layout.height):
        raise Unsupported("too large")
    return JpegSource(layout_path, layout, original=path)


def open_image(path: str | Path, cache: DecodeCache | None | str = "default") -> LazyCrop | np.ndarray:
    """The photo at ``path`` as a ``LazyCrop`` when it can be region-decoded, else its full decode.

    Either way the pixels are those of ``images.read_image(path)``; errors are
    ``ImageReadError`` like ``read_image``. ``cache``: a ``DecodeCache``, None (no
    transcoding: only photos that already have usable restart markers are lazy) or
    ``"default"`` (``default_cache()``). The first call for a photo without markers
    decodes it in full and writes its copy to the cache; later calls are lazy.
    """
    if isinstance(cache, str):
        cache = default_cache()
    try:
        st = os.stat(path)
    except OSError:
        return read_image(path)  # raises ImageReadError with the reason
    key = (os.fspath(path), st.st_size, st.st_mtime_ns, cache.root if cache else None)
    known = _INDEX.get(key)
    if known is None:
        known = _resolve(path, st, cache)
        if known is not None:
            _remember(key, known)
    if isinstance(known, JpegSource):
        return LazyCrop(known, 0, 0, known.layout.height, known.layout.width)
    img = read_image(path)
    if known is None and cache is not None:  # first sight of a photo without markers
        copy = cache.build(path, st, decoded=img)
        try:
            _remember(key, _FULL if copy is None else _source(path, copy))
        except (Unsupported, OSError, IndexError, struct.error):
            _remember(key, _FULL)
    return img


def _resolve(path: str | Path, st: os.stat_result, cache: DecodeCache | None) -> JpegSource | str | None:
    """A source for ``path``, ``_FULL``, or None when the cache copy is still to be made."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(3)
    except OSError:
        return _FULL
    if magic != b"\xff\xd8\xff":
        return _FULL
    try:
        return _source(path, path)  # already has usable restart markers
    except NoRestartMarkers:
        if cache is None:
            return _FULL
    except (Unsupported, OSError, IndexError, struct.error):
        return _FULL
    copy, full = cache.paths(cache.key(path, st))
    if full.exists():
        return _FULL
    if copy.exists():
        try:
            return _source(path, copy)
        except (Unsupported, OSError, IndexError, struct.error):
            return None  # damaged copy: rebuild it
    return None if libjpeg() is not None else _FULL
