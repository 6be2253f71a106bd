"""Yardsticks and FLOPs: fp32 matmul throughput (the 100% of the "% of BLAS" column) and the
floating-point work of one step, from XLA's cost analysis and from the layer shapes."""

from __future__ import annotations

import math
import time


def best_matmul_gflops(fn, n: int, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``fn`` (an n x n by n x n product)."""
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return round(2.0 * n**3 / best / 1e9, 1)


def numpy_matmul_yardstick(sizes=(2048, 4096), repeats=5) -> dict:
    """NumPy's BLAS (run in the parent process, which imports no JAX)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        a = rng.random((n, n), dtype=np.float32)
        b = rng.random((n, n), dtype=np.float32)
        out[str(n)] = best_matmul_gflops(lambda: a @ b, n, repeats)
    blas = "unknown"
    try:
        dep = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        blas = f"{dep.get('name', '?')} {dep.get('version', '')}".strip()
    except Exception:  # pragma: no cover - older NumPy
        pass
    return {"gflops": out, "best_gflops": max(out.values()), "library": blas, "numpy": np.__version__}


def jnp_matmul_yardstick(sizes, repeats) -> dict:
    """``jnp.matmul`` under jit on XLA CPU."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    f, out = jax.jit(jnp.matmul), {}
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(n).random((n, n), dtype=np.float32))
        out[str(n)] = best_matmul_gflops(lambda: f(a, a).block_until_ready(), n, repeats)
    return out


def xla_flops(compiled) -> float | None:
    """FLOPs of a compiled JAX function according to XLA's cost analysis."""
    try:
        ca = compiled.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca["flops"])
    except Exception:
        return None


def analytic_flops(image_shape, objective) -> dict:
    """FLOPs of one value-and-gradient evaluation, counted from the layer shapes.

    Every 3x3 convolution up to the deepest requested layer costs ``2*9*Cin*Cout*H*W`` forward
    and the same again for the gradient with respect to its input (no weight gradients are
    needed), so convolutions cost 2x their forward FLOPs.  Each style layer's Gram matrix costs
    ``2*H*W*C^2`` forward and the same backward.  Element-wise work (ReLU, pooling, losses,
    Adam) is ignored.
    """
    h, w = image_shape[:2]
    conv_fwd = gram = 0.0
    style_layers = set(objective.style_layers)
    for layer in objective.extractor.model.layers:
        kind = type(layer).__name__
        if kind in ("Conv2D", "WinogradConv2D"):  # counted as direct convolutions either way
            kh, kw, cin, cout = getattr(layer, "conv", layer).kernel.shape
            conv_fwd += 2.0 * kh * kw * cin * cout * h * w
            if layer.name in style_layers:
                gram += 2.0 * 2.0 * h * w * cout * cout
        elif kind in ("MaxPooling2D", "MaxPool2x2", "AveragePooling2D"):
            h, w = h // 2, w // 2
    total = 2.0 * conv_fwd + gram
    return {"conv_forward_gflop": round(conv_fwd / 1e9, 3), "gram_gflop": round(gram / 1e9, 3),
            "total_gflop": round(total / 1e9, 3),
            "formula": "2 x sum_conv(2*9*Cin*Cout*H*W) + sum_style(4*H*W*C^2)"}
