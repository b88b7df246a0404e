"""The app's two icons, drawn in pure Python and written as PNGs (zlib + struct, no Pillow).

* ``color.png``: 192×192, a white speech bubble with three dots on the accent colour.
* ``outline.png``: 32×32, the same bubble in white on a transparent background; every pixel
  is white and only its alpha varies, as Teams asks of outline icons.

The committed PNGs are the output of ``python -m manifest.icons``; run it again after
changing the drawing or ``ACCENT_COLOR`` (the manifest's ``accentColor`` uses it too).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

ACCENT_COLOR = "#3B5BDB"

HERE = Path(__file__).resolve().parent
COLOR_SIZE = 192
OUTLINE_SIZE = 32

Pixel = tuple[int, int, int, int]
Shape = Callable[[float, float], bool]  # (x, y) in 0..1 unit-square coordinates -> inside?


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def png_bytes(width: int, height: int, pixels: list[list[Pixel]]) -> bytes:
    """An 8-bit RGBA, non-interlaced PNG (filter 0 on every row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = bytearray()
    for row in pixels:
        raw.append(0)
        for pixel in row:
            raw.extend(pixel)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
    )


def _in_rounded_rect(x: float, y: float, left: float, top: float, right: float, bottom: float, r: float) -> bool:
    if not (left <= x <= right and top <= y <= bottom):
        return False
    cx = min(max(x, left + r), right - r)
    cy = min(max(y, top + r), bottom - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _in_triangle(x: float, y: float, a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
    def side(p: tuple[float, float], q: tuple[float, float]) -> float:
        return (x - q[0]) * (p[1] - q[1]) - (p[0] - q[0]) * (y - q[1])

    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    has_neg = d1 < 0 or d2 < 0 or d3 < 0
    has_pos = d1 > 0 or d2 > 0 or d3 > 0
    return not (has_neg and has_pos)


def _bubble(margin: float) -> tuple[Shape, Shape]:
    """The bubble body (with its tail) and the three dots, inside a square with ``margin``."""
    left, right = margin, 1 - margin
    span = right - left
    top, bottom = margin + 0.04 * span, margin + 0.78 * span
    radius = 0.2 * span
    tail = ((left + 0.18 * span, bottom - 0.05), (left + 0.42 * span, bottom - 0.05), (left + 0.12 * span, 1 - margin))
    mid_y = (top + bottom) / 2
    dot_r = 0.075 * span
    dots = [(left + span * f, mid_y) for f in (0.27, 0.5, 0.73)]

    def body(x: float, y: float) -> bool:
        return _in_rounded_rect(x, y, left, top, right, bottom, radius) or _in_triangle(x, y, *tail)

    def dot(x: float, y: float) -> bool:
        return any((x - dx) ** 2 + (y - dy) ** 2 <= dot_r * dot_r for dx, dy in dots)

    return body, dot


def _coverage(shape: Shape, px: int, py: int, size: int, samples: int = 4) -> float:
    """Fraction of pixel (px, py) covered by ``shape``: supersampled for smooth edges."""
    hits = 0
    for sy in range(samples):
        for sx in range(samples):
            if shape((px + (sx + 0.5) / samples) / size, (py + (sy + 0.5) / samples) / size):
                hits += 1
    return hits / (samples * samples)


def _blend(under: tuple[int, int, int], over: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    r, g, b = (round(u + (o - u) * amount) for u, o in zip(under, over, strict=True))
    return r, g, b


def color_pixels(size: int = COLOR_SIZE) -> list[list[Pixel]]:
    accent = hex_to_rgb(ACCENT_COLOR)
    white = (255, 255, 255)
    body, dot = _bubble(margin=0.2)
    rows = []
    for py in range(size):
        row = []
        for px in range(size):
            rgb = _blend(accent, white, _coverage(body, px, py, size))
            rgb = _blend(rgb, accent, _coverage(dot, px, py, size))
            row.append((*rgb, 255))
        rows.append(row)
    return rows


def outline_pixels(size: int = OUTLINE_SIZE) -> list[list[Pixel]]:
    body, dot = _bubble(margin=0.06)
    rows = []
    for py in range(size):
        row = []
        for px in range(size):
            alpha = max(0.0, _coverage(body, px, py, size, 8) - _coverage(dot, px, py, size, 8))
            row.append((255, 255, 255, round(alpha * 255)))
        rows.append(row)
    return rows


def write_icons(folder: Path = HERE) -> tuple[Path, Path]:
    color = folder / "color.png"
    outline = folder / "outline.png"
    color.write_bytes(png_bytes(COLOR_SIZE, COLOR_SIZE, color_pixels()))
    outline.write_bytes(png_bytes(OUTLINE_SIZE, OUTLINE_SIZE, outline_pixels()))
    return color, outline


if __name__ == "__main__":
    for path in write_icons():
        print(f"wrote {path}")
