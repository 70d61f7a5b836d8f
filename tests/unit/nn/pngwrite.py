"""A small PNG writer for test fixtures: every bit depth and colour type, palettes with tRNS,
Adam7 interlacing and row filters, which PIL cannot all write."""
import struct
import zlib

import numpy as np

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(kind: bytes, data: bytes, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) & 0xffffffff
    if not crc_ok:
        crc ^= 0xdeadbeef
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _pack_rows(a: np.ndarray, depth: int) -> list:
    """a: H x W x C integers -> list of row byte strings (unfiltered)."""
    h, w, c = a.shape
    rows = []
    for y in range(h):
        r = a[y].reshape(-1)
        if depth == 16:
            rows.append(r.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(r.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            bits = np.zeros((len(r) + per - 1) // per * per, dtype=np.uint8)
            bits[:len(r)] = r
            bits = bits.reshape(-1, per)
            packed = np.zeros(bits.shape[0], dtype=np.uint16)
            for i in range(per):
                packed |= bits[:, i].astype(np.uint16) << (8 - depth * (i + 1))
            rows.append(packed.astype(np.uint8).tobytes())
    return rows


def _filter(rows: list, bpp: int, mode: int) -> bytes:
    out = bytearray()
    prev = None
    for i, r in enumerate(rows):
        f = (i % 3) if mode == 1 else 0  # mix None / Sub / Up filters
        b = np.frombuffer(r, dtype=np.uint8).astype(np.int16)
        if f == 1:
            left = np.concatenate([np.zeros(bpp, np.int16), b[:-bpp]]) if len(b) > bpp else \
                np.zeros_like(b)
            if len(b) > bpp:
                d = (b - left) & 0xff
            else:
                d = b
        elif f == 2 and prev is not None:
            d = (b - prev) & 0xff
        else:
            f, d = 0, b
        out.append(f)
        out += d.astype(np.uint8).tobytes()
        prev = b
    return bytes(out)


def encode(a: np.ndarray, depth: int, ctype: int, palette=None, trns=None, interlace=False,
           filters: int = 0, extra_chunks=(), idat_split: int = 0) -> bytes:
    """a: H x W x C array of sample values (palette indices for ctype 3)."""
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    assert c == CHANNELS[ctype]
    bpp = max(1, c * depth // 8)
    if interlace:
        raw = b""
        for (x0, y0, dx, dy) in ADAM7:
            sub = a[y0::dy, x0::dx]
            if sub.shape[0] and sub.shape[1]:
                raw += _filter(_pack_rows(sub, depth), bpp, filters)
    else:
        raw = _filter(_pack_rows(a, depth), bpp, filters)
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, int(interlace)))
    for k, d in extra_chunks:
        out += chunk(k, d)
    if palette is not None:
        out += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    z = zlib.compress(raw, 9)
    if idat_split:
        for i in range(0, len(z), idat_split):
            out += chunk(b"IDAT", z[i:i + idat_split])
    else:
        out += chunk(b"IDAT", z)
    out += chunk(b"IEND", b"")
    return out
