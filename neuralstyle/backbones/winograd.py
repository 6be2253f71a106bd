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


def _transform_1d(taps, matrix):
    """``matrix @ taps`` along a list of arrays: the 1-D transform, applied tile-wise."""
    return [sum(float(c) * t for c, t in zip(row, taps) if c != 0) for row in matrix]


def _four_taps(x, axis: int, tiles: int):
    """The 4 overlapping taps ``x[2 i + u]`` (u = 0..3, i < tiles) along ``axis``, as 4 arrays,
    through a reshape into pairs (contiguous slices, no strided gathers)."""
    shape = x.shape
    pairs = x.reshape(shape[:axis] + (tiles + 1, 2) + shape[axis + 1 :])

    def take(start, stop, k):
        index = [slice(None)] * pairs.ndim
        index[axis], index[axis + 1] = slice(start, stop), k
        return pairs[tuple(index)]

    return [take(0, tiles, 0), take(0, tiles, 1), take(1, tiles + 1, 0), take(1, tiles + 1, 1)]


def _input_tiles(x, flip: bool):
    """``V = B^T d B`` for every 4x4 tile of ``x`` (N, H, W, C), padded for "same" output:
    ``(16, N * tiles_h * tiles_w, C)`` and the tile counts.  ``flip`` permutes the 16 positions
    by :data:`FLIP` (for the input gradient)."""
    n, h, w, c = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    order = FLIP if flip else (0, 1, 2, 3)
    rows = _transform_1d(_four_taps(xp, 1, th), BT)
    rows = jnp.stack([rows[i] for i in order])                     # (4, N, th, W+2, C)
    cols = _transform_1d(_four_taps(rows, 3, tw), BT)
    v = jnp.stack([cols[i] for i in order], axis=1)                # (4, 4, N, th, tw, C)
    return v.reshape(16, n * th * tw, c), th, tw


def _output_tiles(m, n: int, th: int, tw: int, h: int, w: int, flip: bool):
    """``Y = A^T M A`` of the products ``m`` (16, N * th * tw, K): the (N, H, W, K) output."""
    k = m.shape[-1]
    m = m.reshape(4, 4, n, th, tw, k)
    order = FLIP if flip else (0, 1, 2, 3)
    rows = _transform_1d([m[i] for i in order], AT)                # 2 x (4, N, th, tw, K)
    out = [_transform_1d([r[j] for j in order], AT) for r in rows]  # out[y][x]: (N, th, tw, K)
    y = jnp.stack([jnp.stack(pair, axis=3) for pair in out], axis=2)  # (N, th, 2, tw, 2, K)
    return y.reshape(n, 2 * th, 2 * tw, k)[:, :h, :w]


def _winograd_forward(x, u):
    n, h, w, _ = x.shape
    v, th, tw = _input_tiles(x, flip=False)
    m = jnp.einsum("pnc,pck->pnk", v, u.astype(v.dtype))
    return _output_tiles(m, n, th, tw, h, w, flip=False)


def _winograd_input_gradient(g, u):
    """The "same" convolution of ``g`` with the flipped, channel-transposed kernel."""
    n, h, w, _ = g.shape
    v, th, tw = _input_tiles(g, flip=True)
    m = jnp.einsum("pnk,pck->pnc", v, u.astype(v.dtype))
    return _output_tiles(m, n, th, tw, h, w, flip=True)


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
