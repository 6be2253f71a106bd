"""Figures of the quality benchmark drawn with Pillow (no plotting dependency).

* :func:`tradeoff_plot`: content distance (LPIPS) against style distance (sliced Wasserstein),
  one point per configuration (means over the panel), coloured by factor, the Pareto front joined
  and filled, the unstylized photo as a reference cross.
* :func:`contact_sheet`: the inputs (rows "content", "style") and every configuration's results
  (one row each, one column per content/style pair), labelled with the settings and metrics.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _font(size: int):
    return ImageFont.load_default(size=size)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    span = max(hi - lo, 1e-12)
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _save_png(image: Image.Image, path: Path, colors: int = 0) -> None:
    from neuralstyle.images import atomic_write

    if colors:
        image = image.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write(Path(path), buffer.getvalue())


def tradeoff_plot(summary: list[dict], path, title: str = "", x_key: str = "lpips",
                  y_key: str = "swd") -> None:
    width, height = 1100, 760
    left, right, top, bottom = 90, 280, 60, 80
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    small, normal = _font(13), _font(16)
    xs = [e[x_key] for e in summary]
    ys = [e[y_key] for e in summary]
    x0, x1 = min(0.0, min(xs)), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = 0.06 * (x1 - x0 or 1), 0.08 * (y1 - y0 or 1)
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom))

    # axes and grid
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for t in nice_ticks(x0, x1):
        u, _ = px(t, y0)
        draw.line([u, top, u, height - bottom], fill="#e6e6e6")
        draw.text((u, height - bottom + 6), f"{t:g}", fill="black", font=small, anchor="mt")
    for t in nice_ticks(y0, y1):
        _, v = px(x0, t)
        draw.line([left, v, width - right, v], fill="#e6e6e6")
        draw.text((left - 6, v), f"{t:g}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text(((left + width - right) / 2, height - 30),
              "content distance: LPIPS to the photo (VGG16)  ->  less content kept",
              fill="black", font=normal, anchor="mm")
    label = "style distance: relative sliced Wasserstein to the painting (VGG16)"
    text = Image.new("RGBA", (height - top - bottom, 24), (255, 255, 255, 0))
    ImageDraw.Draw(text).text(((height - top - bottom) / 2, 12), label, fill="black", font=normal,
                              anchor="mm")
    img.paste(text.rotate(90, expand=True), (14, top), text.rotate(90, expand=True))
    draw.text((left, 20), title, fill="black", font=normal)

    # Pareto front
    front = sorted((e for e in summary if e.get("pareto")), key=lambda e: e[x_key])
    if len(front) > 1:
        draw.line([px(e[x_key], e[y_key]) for e in front], fill="#444444", width=2)

    placed: list = []  # label boxes drawn so far: a new label moves down until it overlaps none

    def place_label(u, v, text):
        w = draw.textlength(text, font=small)
        y = v - 9
        for _ in range(8):
            box = (u + 11, y - 7, u + 11 + w, y + 7)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
            y += 14
        placed.append(box)
        draw.text((u + 11, y), text, fill="#222222", font=small, anchor="lm")

    factors = list(dict.fromkeys(e["factor"] for e in summary if e["config"] >= 0))
    colour = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(factors)}
    for e in summary:
        u, v = px(e[x_key], e[y_key])
        if e["config"] < 0:
            draw.line([u - 7, v - 7, u + 7, v + 7], fill="black", width=3)
            draw.line([u - 7, v + 7, u + 7, v - 7], fill="black", width=3)
            draw.text((u + 10, v), "photo (no stylization)", fill="black", font=small, anchor="lm")
            continue
        r = 7
        if e.get("pareto"):
            draw.ellipse([u - r - 3, v - r - 3, u + r + 3, v + r + 3], outline="black", width=2)
        draw.ellipse([u - r, v - r, u + r, v + r], fill=colour[e["factor"]], outline="black")
        place_label(u, v, e["level"] if e["factor"] != "base" else "base")

    # legend
    lx, ly = width - right + 20, top + 6
    for f in factors:
        draw.ellipse([lx, ly, lx + 12, ly + 12], fill=colour[f], outline="black")
        draw.text((lx + 20, ly + 6), f, fill="black", font=small, anchor="lm")
        ly += 22
    draw.ellipse([lx - 2, ly - 2, lx + 14, ly + 14], outline="black", width=2)
    draw.text((lx + 20, ly + 6), "on the Pareto front", fill="black", font=small, anchor="lm")
    ly += 22
    draw.line([lx, ly + 6, lx + 12, ly + 6], fill="#444444", width=2)
    draw.text((lx + 20, ly + 6), "Pareto front (lower-left", fill="black", font=small, anchor="lm")
    draw.text((lx + 20, ly + 22), "is better on both)", fill="black", font=small, anchor="lm")
    _save_png(img, path)


def _thumb(image: np.ndarray, size: int) -> Image.Image:
    pil = Image.fromarray(np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8))
    pil.thumbnail((size, size), Image.Resampling.LANCZOS)
    return pil


def contact_sheet(result: dict, summary: list[dict], path, thumb: int = 96) -> None:
    pairs = list(result["inputs"])
    runs = {(r["config"], r["photo"], r["painting"]): r for r in result["rows"] if "_image" in r}
    configs = [e for e in summary if e["config"] >= 0]
    label_w, caption_h, header_h = 330, 16, 34
    cell_w, cell_h = thumb + 6, thumb + caption_h + 6
    rows = 2 + len(configs)
    width = label_w + cell_w * len(pairs)
    height = header_h + cell_h * rows + 18
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    small, normal = _font(11), _font(13)
    for j, (photo, painting) in enumerate(pairs):
        for k, name in enumerate((photo, painting)):
            draw.text((label_w + j * cell_w + cell_w / 2, 9 + 14 * k), name[:16], fill="black",
                      font=small, anchor="mm")

    def put(row, j, image, caption):
        x, y = label_w + j * cell_w + 3, header_h + row * cell_h + 3
        t = _thumb(image, thumb)
        sheet.paste(t, (x + (thumb - t.width) // 2, y + (thumb - t.height) // 2))
        draw.text((x + thumb / 2, y + thumb + 2), caption, fill="black", font=small, anchor="mt")

    def label(row, lines):
        y = header_h + row * cell_h + 6
        for k, line in enumerate(lines):
            draw.text((6, y + 16 * k), line, fill="black", font=normal if k == 0 else small)

    label(0, ["content (photo)"])
    label(1, ["style (painting)"])
    for j, pair in enumerate(pairs):
        content, style = result["inputs"][pair]
        put(0, j, content, "")
        put(1, j, style, "")
    for i, e in enumerate(configs, start=2):
        lines = [("*P* " if e["pareto"] else "") + e["name"]]
        overrides = e["overrides"]
        while overrides and len(lines) < 4:
            lines.append(overrides[:52])
            overrides = overrides[52:]
        lines.append(f"LPIPS {e['lpips']:.3f}  SWD {e['swd']:.3f}  Gram {e['gram']:.3f}")
        label(i, lines)
        for j, (photo, painting) in enumerate(pairs):
            r = runs.get((e["config"], photo, painting))
            if r is not None:
                put(i, j, r["_image"], f"{r['lpips']:.2f} / {r['swd']:.2f}")
        draw.line([0, header_h + i * cell_h, width, header_h + i * cell_h], fill="#dddddd")
    draw.text((6, height - 14), "captions: LPIPS / SWD", fill="#555555", font=small)
    _save_png(sheet, path)
