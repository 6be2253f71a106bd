"""How time per step and memory grow with the pixel count: least-squares fits per
implementation and optimizer, with residuals and a power-law exponent."""

from __future__ import annotations


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares ``y = a + b x`` with residuals, and the exponent ``p`` of ``y ~ x^p``."""
    import numpy as np

    x_, y_ = np.asarray(x, float), np.asarray(y, float)
    (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(x_), x_], 1), y_, rcond=None)
    fit = a + b * x_
    p = float(np.polyfit(np.log(x_), np.log(y_), 1)[0]) if len(x_) > 1 else None
    return {"a": float(a), "b": float(b), "fitted": [round(float(v), 2) for v in fit],
            "residuals": [round(float(v), 2) for v in y_ - fit],
            "relative_residuals": [round(float(v), 4) for v in (y_ - fit) / y_],
            "power_law_exponent": None if p is None else round(p, 3)}


def scaling(rows: list[dict]) -> list[dict]:
    """Time per step and peak memory against pixel count, per implementation and optimizer
    (the report's rows), with least-squares fits ``ms = a + b * pixels`` and
    ``MiB above baseline = a + b * pixels``."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["implementation"], r["optimizer"]), []).append(r)
    out = []
    for (impl, opt), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["pixels"])
        entry = {"implementation": impl, "optimizer": opt, "sizes": [r["size"] for r in rs],
                 "pixels": [r["pixels"] for r in rs], "ms_per_step": [r["median_ms"] for r in rs],
                 "ms_per_megapixel": [round(r["median_ms"] / (r["pixels"] / 1e6), 1) for r in rs],
                 "peak_rss_mib": [r["peak_rss_mib"] for r in rs],
                 "above_baseline_mib": [r["above_baseline_mib"] for r in rs]}
        if len(rs) >= 2:
            t = linear_fit(entry["pixels"], entry["ms_per_step"])
            entry["time_fit"] = dict(t, a_ms=round(t["a"], 1), b_ms_per_megapixel=round(t["b"] * 1e6, 1))
            worst = max(abs(v) for v in t["relative_residuals"])
            entry["time_linear"] = worst < 0.1 if len(rs) >= 3 else None  # 2 points fit any line
            if all(v is not None for v in entry["above_baseline_mib"]):
                m = linear_fit(entry["pixels"], entry["above_baseline_mib"])
                entry["memory_fit"] = dict(m, a_mib=round(m["a"], 1),
                                           b_mib_per_megapixel=round(m["b"] * 1e6, 1))
        out.append(entry)
    return out
