"""Winograd F(2x2, 3x3) convolutions for frozen 3x3 "same" VGG layers.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), eq. (8): for every
2x2 tile of the output, with ``d`` the 4x4 input tile around it and ``g`` the 3x3 kernel of one
(input channel, output channel) pair,

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A,

which needs 16 multiplications per tile instead of the direct convolution's 36.  Summed over input
channels, the element-wise product becomes one matrix product per tile position:
``M[p] = V[p] @ U[p]`` with ``V[p]`` the transformed input tiles (tiles x C_in) and ``U[p]``
the transformed kernel (C_in x C_out), for the 16 positions ``p`` of the 4x4 transformed tile.

What this module does with it:

* :func:`winograd_kernel` transforms a ``(3, 3, C_in, C_out)`` kernel once, when the extractor is
  built (the backbone's weights are frozen), into ``U`` of shape ``(16, C_in, C_out)``.
* :func:`winograd_conv2d` is the convolution with stride 1 and "same" zero padding, for any
  height and width (odd sides are padded to whole tiles and cropped).
* Its gradient with respect to the input is a Winograd convolution too (a custom VJP): the input
  gradient of a "same" 3x3 convolution is the "same" convolution of the output gradient with the
  kernel flipped in space and transposed in channels.  Because ``G R = P G`` (``R`` reverses the
  three taps, ``P`` swaps the first and last of the four rows of ``G``), the transformed flipped
  kernel is ``U`` with its tile positions permuted, ``U_flip[a, b] = U[s(a), s(b)]^T`` with
  ``s = (3, 1, 2, 0)``; the permutation is applied to the lists of tiles (free), and the transpose
  is the contraction over ``U``'s last axis.  So one ``U`` serves both directions: no second
  kernel is stored and nothing is re-laid out per step.

* The transformed tiles ``V`` (4x the layer's input) and the products ``M`` (4x its output) are
  the convolution's working memory; :func:`winograd_conv2d` computes them in bands of tile rows of
  at most :data:`BAND_BYTES`, one band after the other (:func:`tile_bands`), so that a layer's
  working memory stays small next to the activations a step keeps for its backward pass.  The
  values are those of the convolution in one piece to float32 rounding: every tile gets the
  same transforms and products, but a band's matrix product has fewer rows, and the CPU's matrix
  kernels may block and sum it in another order (bit for bit on a 2-core Xeon with AVX-512; last
  bits differ, about 5e-7 of the largest value, on an AMD EPYC with AVX2 only).

Departure from a general convolution: the gradient with respect to the kernel is not computed
(it is returned as zero).  This is meant for frozen backbones, whose weights are constants of the
optimization; do not train weights through it.

Cost on the CPU (``benchmarks/results/winograd.md``): the matrix products shrink 2.25x, but the
tile transforms are memory-bound element-wise work, so Winograd wins where the channel count is
large relative to the image (VGG blocks 3-5) and loses in blocks 1-2; see
:func:`winograd_layers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: G of F(2x2, 3x3) (Lavin & Gray 2016, eq. 7): the kernel transform ``G g G^T``.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)
#: B^T, the input-tile transform ``B^T d B``.
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
#: A^T, the output transform ``A^T m A``.
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
#: The tile-position permutation that turns ``U`` into the transform of the flipped kernel.
FLIP = (3, 1, 2, 0)


def winograd_kernel(kernel) -> jnp.ndarray:
    """``U = G g G^T`` of a ``(3, 3, C_in, C_out)`` kernel, as ``(16, C_in, C_out)`` (position
    ``p = 4 a + b`` of the 4x4 transformed tile first)."""
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"Winograd F(2x2, 3x3) needs a (3, 3, C_in, C_out) kernel, got shape {kernel.shape}")
    u = jnp.einsum("ai,ijck,bj->abck", G, kernel, G, precision=jax.lax.Precision.HIGHEST)
    return u.reshape(16, *kernel.shape[2:])


# The tile transforms below are written with ``lax`` primitives, not ``jax.numpy``: each jnp call
# inside a traced function is a nested jit of its own, and the ~2000 of a VGG19 step's Winograd
# layers took 0.6 s of its 0.8 s trace at 512 px; the primitives trace in a fraction of that and
# compute the same values.


def _transform_1d(taps, matrix):
    """``matrix @ taps`` along a list of arrays: the 1-D transform, applied tile-wise.  The
    entries of ``B^T`` and ``A^T`` are 0, 1 and -1, so it is additions and subtractions only."""
    rows = []
    for row in matrix:
        acc = None
        for c, t in zip(row, taps):
            if c == 0:
                continue
            if c not in (1, -1):
                raise ValueError(f"transform entries must be 0, 1 or -1, got {c}")
            if acc is None:
                acc = t if c > 0 else lax.neg(t)
            else:
                acc = lax.add(acc, t) if c > 0 else lax.sub(acc, t)
        rows.append(acc)
    return rows


def _stack(arrays, axis: int):
    """``jnp.stack`` with primitives."""
    return lax.concatenate([lax.expand_dims(a, (axis,)) for a in arrays], axis)


def _four_taps(x, axis: int, tiles: int):
    """The 4 overlapping taps ``x[2 i + u]`` (u = 0..3, i < tiles) along ``axis``, as 4 arrays,
    through a reshape into pairs (contiguous slices, no strided gathers)."""
    shape = x.shape
    pairs = lax.reshape(x, shape[:axis] + (tiles + 1, 2) + shape[axis + 1 :])

    def take(start, k):
        rows = lax.slice_in_dim(pairs, start, start + tiles, axis=axis)
        return lax.index_in_dim(rows, k, axis=axis + 1, keepdims=False)

    return [take(0, 0), take(0, 1), take(1, 0), take(1, 1)]


def _input_tiles(xp, th: int, tw: int, flip: bool):
    """``V = B^T d B`` for the ``th`` x ``tw`` 4x4 tiles (stride 2) of the padded ``xp`` (N, 2 th + 2,
    2 tw + 2, C): ``(16, N * th * tw, C)``.  ``flip`` permutes the 16 positions by :data:`FLIP`
    (for the input gradient)."""
    n, c = xp.shape[0], xp.shape[-1]
    order = FLIP if flip else (0, 1, 2, 3)
    rows = _transform_1d(_four_taps(xp, 1, th), BT)
    rows = _stack([rows[i] for i in order], 0)                     # (4, N, th, 2 tw + 2, C)
    cols = _transform_1d(_four_taps(rows, 3, tw), BT)
    v = _stack([cols[i] for i in order], 1)                        # (4, 4, N, th, tw, C)
    return lax.reshape(v, (16, n * th * tw, c))


def _output_tiles(m, n: int, th: int, tw: int, flip: bool):
    """``Y = A^T M A`` of the products ``m`` (16, N * th * tw, K): the (N, 2 th, 2 tw, K) output."""
    k = m.shape[-1]
    m = lax.reshape(m, (4, 4, n, th, tw, k))
    order = FLIP if flip else (0, 1, 2, 3)
    rows = _transform_1d([lax.index_in_dim(m, i, 0, keepdims=False) for i in order], AT)  # 2 x (4, N, th, tw, K)
    out = [_transform_1d([lax.index_in_dim(r, j, 0, keepdims=False) for j in order], AT)
           for r in rows]                                          # out[y][x]: (N, th, tw, K)
    y = _stack([_stack(pair, 3) for pair in out], 2)               # (N, th, 2, tw, 2, K)
    return lax.reshape(y, (n, 2 * th, 2 * tw, k))


#: The most bytes the transformed tiles ``V`` and their products ``M`` of one band of tile rows
#: may take (:func:`tile_bands`).  Together they are 4 times the layer's input plus 4 times its
#: output (16 positions per 2x2 output tile): in one piece 512 MiB for each block3 layer of VGG19
#: at 1024 px, live on top of the activations kept for the backward pass, which made them the
#: peak of the whole L-BFGS trial there (2554 MiB of temporaries against 2347 with XLA's
#: convolution; in bands of 64 MiB, 2355).  ``backbone.conv=auto``'s layers (block3_conv2 onward)
#: are one band up to 256 px (the same program as in one piece); at 512 px block3 takes 2 bands,
#: at 1024 px block3 8, block4 3-4.  Smaller bands cost compile time (more, smaller fusions), not
#: step time (``benchmarks/results/lbfgs_memory.md``).
BAND_BYTES = 64 * 2**20


def tile_bands(n: int, th: int, tw: int, c_in: int, c_out: int, itemsize: int = 4) -> list[tuple[int, int]]:
    """The bands ``[(first tile row, end tile row)]``, of nearly equal height, in which a Winograd
    convolution of ``n`` images of ``th`` x ``tw`` tiles, ``c_in`` -> ``c_out`` channels, is
    computed, so that one band's ``V`` and ``M`` take at most :data:`BAND_BYTES` (one tile row
    per band at least)."""
    total = 16 * n * th * tw * (c_in + c_out) * itemsize
    count = max(1, min(th, -(-total // BAND_BYTES)))
    edges = [i * th // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _after(out, row: int):
    """``False``, computed from ``out[:, row]``: a data dependency on what has been written into
    ``out``.  (``x > inf`` is false for every float, NaN included; XLA does not fold it.  The CPU
    compiler drops ``optimization_barrier`` before scheduling, so it cannot order the bands.)"""
    return out[:1, row : row + 1, :1, :1] > jnp.inf


def _winograd(x, u, flip: bool):
    """The "same" 3x3 convolution of ``x`` (N, H, W, C) with the transformed kernel ``u``
    (``flip``: with the flipped, channel-transposed kernel, for the input gradient).

    It runs in bands of tile rows (:func:`tile_bands`) written one after the other into the
    output; each band's input is selected through :func:`_after` of the previous band's output,
    so a band's input transform, products and output transform are done before the next band's
    start and only one band's ``V`` and ``M`` are ever live.  Every tile is computed as without
    bands (the same output to float32 rounding; see the module docstring)."""
    n, h, w, c = x.shape
    k = u.shape[1] if flip else u.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    spec = "pnk,pck->pnc" if flip else "pnc,pck->pnk"
    bands = tile_bands(n, th, tw, c, k, jnp.dtype(x.dtype).itemsize)

    def band(rows, start, stop):
        v = _input_tiles(rows, stop - start, tw, flip)
        return _output_tiles(jnp.einsum(spec, v, u.astype(v.dtype)), n, stop - start, tw, flip)

    if len(bands) == 1:
        return band(xp, 0, th)[:, :h, :w]
    out = jnp.zeros((n, 2 * th, 2 * tw, k), x.dtype)
    for i, (start, stop) in enumerate(bands):
        rows = xp[:, 2 * start : 2 * stop + 2]
        if i > 0:  # never taken (see _after): orders this band after the previous one
            rows = jnp.where(_after(out, 2 * bands[i - 1][0]), jnp.zeros_like(rows), rows)
        out = jax.lax.dynamic_update_slice_in_dim(out, band(rows, start, stop), 2 * start, axis=1)
    return out[:, :h, :w]


def _winograd_forward(x, u):
    return _winograd(x, u, flip=False)


def _winograd_input_gradient(g, u):
    """The "same" convolution of ``g`` with the flipped, channel-transposed kernel."""
    return _winograd(g, u, flip=True)


@jax.custom_vjp
def winograd_conv2d(x, u):
    """3x3 convolution, stride 1, "same" zero padding, of ``x`` (N, H, W, C_in) with the
    transformed kernel ``u = winograd_kernel(kernel)``; equals
    ``lax.conv_general_dilated(x, kernel, (1, 1), "SAME")`` (NHWC, HWIO) to float32 rounding.
    The gradient with respect to ``u`` is zero (frozen weights; see the module docstring)."""
    return _winograd_forward(x, u)


def _vjp_forward(x, u):
    return _winograd_forward(x, u), u


def _vjp_backward(u, g):
    return _winograd_input_gradient(g, u), jnp.zeros_like(u)


winograd_conv2d.defvjp(_vjp_forward, _vjp_backward)
