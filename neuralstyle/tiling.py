r"""Exact tiled evaluation of the objective: peak memory set by the tile, not by the image.

The style statistics (a Gram matrix divided by :math:`HW`, a mean) are means over positions and
the content loss is a sum over positions, so the objective of the whole image can be evaluated tile
by tile without approximation (as long as each tile sees enough context):

1. **Statistics pass.**  For every tile, the backbone's features of the tile *with a halo* of
   surrounding pixels; only the tile's interior positions count.  Their statistics add up (weighted
   by their share of the positions) to the statistics :math:`A^l(x)` of the whole image, and their
   content errors to the whole content term.
2. **The loss** :math:`\mathcal{L}(A(x), \dots)` and its gradient :math:`\partial\mathcal{L}/\partial A^l`
   with respect to the global statistics, once (small matrices).
3. **Gradient pass.**  For every tile, the gradient with respect to its pixels (halo included) of
   the surrogate :math:`\sum_l \langle \partial\mathcal{L}/\partial A^l, A^l_{\text{tile}}(x)\rangle`
   plus the tile's content error; by the chain rule the gradients of all tiles, added into the
   image, are the gradient of the whole objective.  The total-variation term is computed on the
   whole image (it is elementwise and cheap).

Exactness needs every interior feature to equal the feature of the untiled image: the halo must
cover the receptive field of the deepest layer used (:func:`receptive_extent`; for VGG19 up to
``block5_conv2`` it reaches 86 px to one side and 101 px to the other, so the default halo is
112 px), and tiles must start at multiples of the deepest layer's stride (16 px after four
poolings) so that pooling windows line up.  At the image border a tile has no halo there, and the
convolutions' zero padding is the untiled one.  With a halo smaller than the receptive field, the
features near a tile's edge see zero padding instead of the neighbouring pixels: that is where a
too-small halo introduces error (see ``tests/test_tiling.py``, which measures it).

Each step costs a forward pass over all tiles and a forward and backward pass over all tiles (about
1.3x an untiled step) times the halo's overhead :math:`((t + 2h)/t)^2`.  Tiles of a few distinct
sizes (interior, last row and column) each compile once.

Families: the style loss must compare statistics computed from position means or sums
(``StyleLoss.compare``, ``statistics_reduction`` and ``moments``): the Gram loss (the Gram matrix),
the Gaussian Wasserstein loss (mean and second moment, the covariance following from them), and the
mean/std and BN-statistics losses (per-channel first and second moments); it must be deterministic
and without spatial masks, and the content loss a sum or mean over positions.  Other families (MMD,
sliced Wasserstein, histogram, MRF) are refused.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .backbones.layer_names import keras_layer_names
from .errors import ConfigError
from .losses.style_loss import moments_of, target_of_moments
from .objective import StyleObjective, Targets, mix_style_statistics, style_blend_weights


def receptive_extent(arch: str, layers) -> tuple[int, int, int]:
    """``(left, right, stride)`` of the deepest of ``layers``: the feature at index ``q`` depends
    on the pixels ``[q * stride - left, q * stride + right]`` (3x3 'same' convolutions widen both
    sides by the current stride; a 2x2 pooling widens the right side and doubles the stride)."""
    order = keras_layer_names(arch)
    deepest = max(order.index(n) for n in layers)
    left = right = 0
    stride = 1
    for name in order[: deepest + 1]:
        if name.endswith("_pool"):
            right += stride
            stride *= 2
        else:
            left += stride
            right += stride
    return left, right, stride


def _stride_of(arch: str, layer: str) -> int:
    order = keras_layer_names(arch)
    return 2 ** sum(1 for n in order[: order.index(layer)] if n.endswith("_pool"))


@dataclass(frozen=True)
class Tile:
    """A tile's interior ``[y0, y1) x [x0, x1)`` and the padded window ``[py0, py1) x [px0, px1)``
    the backbone sees, in pixels of the whole image."""

    y0: int
    y1: int
    x0: int
    x1: int
    py0: int
    py1: int
    px0: int
    px1: int


def _spans(length: int, tile: int, halo: int, align: int) -> list[tuple[int, int, int, int]]:
    """Interior and padded spans along one axis: interiors ``[k t, (k + 1) t)``; each window starts
    at a multiple of ``align``, at least ``halo`` before the interior (or at 0) and, where the image
    allows, spans ``t + 2 halo`` pixels, so that most windows have the same size."""
    window = tile + 2 * halo
    spans = []
    for start in range(0, length, tile):
        end = min(length, start + tile)
        padded_start = max(0, min(start - halo, length - window))
        padded_start -= padded_start % align
        padded_end = min(length, max(padded_start + window, end + halo))
        spans.append((start, end, padded_start, padded_end))
    return spans


def tile_grid(shape: tuple[int, int], tile: int, halo: int, align: int) -> list[Tile]:
    """The tiles covering an image of ``shape = (H, W)`` (see :func:`_spans`)."""
    if tile % align or halo % align:
        raise ConfigError(f"tile.size ({tile}) and tile.halo ({halo}) must be multiples of {align} "
                          "px (the stride of the deepest layer), so that pooling windows line up")
    rows, cols = _spans(shape[0], tile, halo, align), _spans(shape[1], tile, halo, align)
    return [Tile(y0, y1, x0, x1, py0, py1, px0, px1)
            for (y0, y1, py0, py1) in rows for (x0, x1, px0, px1) in cols]


def _largest(tiles) -> tuple[int, int]:
    return max(t.py1 - t.py0 for t in tiles), max(t.px1 - t.px0 for t in tiles)


def planned_window(shape: tuple[int, int], arch: str, layers, tile: int,
                   halo: Optional[int] = None) -> tuple[int, int]:
    """The largest padded window of a tiled run at ``shape``, from the backbone's architecture and
    layer names alone (before any network is built): what the memory check needs up front."""
    _, _, align = receptive_extent(arch, layers)
    halo = default_halo(arch, layers) if halo is None else int(halo)
    return _largest(tile_grid(shape, int(tile), halo, align))


def default_halo(arch: str, layers) -> int:
    """The smallest halo that makes tiled features exact: the receptive extent, rounded up to the
    stride."""
    left, right, stride = receptive_extent(arch, layers)
    return int(math.ceil(max(left, right) / stride) * stride)


class TiledObjective:
    """An objective evaluated tile by tile, exactly (see the module docstring).

    Args:
      objective: the :class:`~neuralstyle.objective.StyleObjective` (its weights may be changed
        per call: it is an argument of every method).
      tile: interior tile side in pixels (a multiple of the deepest layer's stride).
      halo: context around each tile in pixels (default :func:`default_halo`, exact).
    """

    def __init__(self, objective: StyleObjective, tile: int, halo: Optional[int] = None):
        extractor = objective.extractor
        loss = objective.style_loss
        if loss.compare is None or loss.statistics_reduction not in ("mean", "sum") or loss.stochastic:
            raise ConfigError("tiled optimization needs a deterministic style loss whose statistics "
                              "follow from means or sums over positions (style_loss=gram, "
                              "wasserstein2, mean_std or bn_statistics); this one is not")
        if getattr(objective.content_loss, "reduction", None) not in ("mean", "sum"):
            raise ConfigError("tiled optimization needs a content loss that is a sum or mean over "
                              "positions (content_loss=squared_error)")
        layers = tuple(objective.content_layers) + tuple(objective.style_layers)
        _, _, self.align = receptive_extent(extractor.arch, layers)
        self.halo = default_halo(extractor.arch, layers) if halo is None else int(halo)
        if tile < 1 or self.halo < 0:
            raise ConfigError(f"tile.size must be >= 1 and tile.halo >= 0 px, got {tile} and {halo}")
        self.tile = int(tile)
        if self.tile % self.align or self.halo % self.align:
            raise ConfigError(f"tile.size ({self.tile}) and tile.halo ({self.halo}) must be multiples "
                              f"of {self.align} px for the layers {', '.join(layers)}")
        self.arch = extractor.arch
        self.strides = {n: _stride_of(extractor.arch, n) for n in layers}
        self._features = jax.jit(lambda objective, params, x: objective.extractor.apply(params, x))
        self._statistics = jax.jit(_tile_statistics)
        self._surrogate_grad = jax.jit(jax.grad(_tile_surrogate, argnums=2))
        self._loss_from_statistics = jax.jit(jax.value_and_grad(_loss_from_statistics, argnums=1,
                                                                has_aux=True))
        self._tv = jax.jit(jax.value_and_grad(
            lambda objective, x: objective.tv_weight * jnp.sum(objective.tv_loss(x)), argnums=1))
        # the gradient is updated in place where the backend can (XLA's CPU backend cannot donate)
        donate = () if jax.default_backend() == "cpu" else (0,)
        self._add = jax.jit(_add_window, donate_argnums=donate)

    # ------------------------------------------------------------------ geometry

    def tiles(self, shape: tuple[int, int]) -> list[Tile]:
        return tile_grid(shape, self.tile, self.halo, self.align)

    def largest_window(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``(H, W)`` of the largest padded window: what sets the peak memory."""
        return _largest(self.tiles(shape))

    def _feature_shape(self, layer: str, height: int, width: int) -> tuple[int, int]:
        s = self.strides[layer]
        return height // s, width // s

    def _masks(self, tile: Tile, shape) -> dict:
        """Per layer, ``(1, h, w, 1)`` ones at the tile's interior features, zeros in the halo."""
        masks = {}
        for layer, s in self.strides.items():
            h, w = self._feature_shape(layer, tile.py1 - tile.py0, tile.px1 - tile.px0)
            top, left = (tile.y0 - tile.py0) // s, (tile.x0 - tile.px0) // s
            bottom = h if tile.y1 == shape[0] else (tile.y1 - tile.py0) // s
            right = w if tile.x1 == shape[1] else (tile.x1 - tile.px0) // s
            mask = np.zeros((1, h, w, 1), np.float32)
            mask[:, top:bottom, left:right] = 1.0
            masks[layer] = mask
        return masks

    def _counts(self, shape) -> dict:
        return {n: self._feature_shape(n, *shape)[0] * self._feature_shape(n, *shape)[1]
                for n in self.strides}

    # ------------------------------------------------------------------ targets

    def features(self, objective: StyleObjective, params, image: jnp.ndarray, layers) -> dict:
        """Features ``{layer: (1, h, w, c)}`` of a ``(1, H, W, 3)`` image, assembled from tiles
        (equal to ``objective.extractor.apply`` with an exact halo)."""
        shape = image.shape[1:3]
        out = {}
        for tile in self.tiles(shape):
            features = self._features(objective, params, _window_of(image, tile))
            masks = self._masks(tile, shape)
            for layer in layers:
                s = self.strides[layer]
                if layer not in out:
                    h, w = self._feature_shape(layer, *shape)
                    out[layer] = np.zeros((1, h, w, features[layer].shape[-1]), np.float32)
                rows = np.flatnonzero(masks[layer][0, :, :, 0].any(axis=1))
                cols = np.flatnonzero(masks[layer][0, :, :, 0].any(axis=0))
                out[layer][:, tile.py0 // s + rows[0]: tile.py0 // s + rows[-1] + 1,
                           tile.px0 // s + cols[0]: tile.px0 // s + cols[-1] + 1] = \
                    np.asarray(_crop(features[layer], rows[0], cols[0], len(rows), len(cols)))
        return {n: jnp.asarray(v) for n, v in out.items()}

    def style_statistics(self, objective: StyleObjective, params, image: jnp.ndarray) -> dict:
        """``{layer: statistics}`` of a ``(1, H, W, 3)`` style image (as ``StyleLoss.target``
        gives them) from its moments accumulated over tiles."""
        statistics, _ = _style_targets(objective, [self._style_moments(objective, params, image)], (1.0,))
        return statistics[0]

    def _style_moments(self, objective: StyleObjective, params, image: jnp.ndarray) -> dict:
        moments, _ = self._accumulate(objective, params,
                                      self._plan(objective, image, None, with_content=False))
        return moments

    def targets(self, objective: StyleObjective, params, content: jnp.ndarray, style, blend=None) -> Targets:
        """As :meth:`StyleObjective.targets` (without masks), tile by tile."""
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        content_features = self.features(objective, params, content, objective.content_layers)
        statistics, weights = _style_targets(objective, [self._style_moments(objective, params, s) for s in styles],
                                             style_blend_weights(blend, len(styles)))
        return Targets(
            content=content_features,
            style=tuple(statistics),
            blend=jnp.asarray(weights, jnp.float32),
            key=jax.random.key(0),
            masks=None,
        )

    # ------------------------------------------------------------------ the objective

    def _content_crops(self, objective, targets, tile: Tile) -> dict:
        crops = {}
        for layer in objective.content_layers:
            s = self.strides[layer]
            h, w = self._feature_shape(layer, tile.py1 - tile.py0, tile.px1 - tile.px0)
            crops[layer] = _crop(targets.content[layer], tile.py0 // s, tile.px0 // s, h, w)
        return crops

    def _plan(self, objective, image, targets, with_content=True) -> list:
        """Per tile: ``(tile, window pixels, interior masks, shares, content target crops)``,
        computed once and used by both passes."""
        shape = image.shape[1:3]
        counts = self._counts(shape)
        return [(tile, _window_of(image, tile), self._masks(tile, shape),
                 self._shares(objective, tile, counts),
                 self._content_crops(objective, targets, tile) if with_content else None)
                for tile in self.tiles(shape)]

    def _accumulate(self, objective, params, plan):
        """The statistics pass: global style statistics and the (unweighted) content term."""
        total_stats, content = None, 0.0
        for _, window, masks, shares, crops in plan:
            stats, tile_content = self._statistics(objective, params, window, masks, crops, shares)
            if total_stats is None:
                total_stats, content = stats, tile_content
            else:
                total_stats, content = _add_trees((total_stats, content), (stats, tile_content))
        return total_stats, content

    def _shares(self, objective, tile: Tile, counts) -> dict:
        """Per layer, the factor that turns the tile's statistics (or mean content error) into its
        contribution to the whole image's: positions of the window / positions of the image for a
        mean, 1 for a sum."""
        shares = {}
        for layer in self.strides:
            h, w = self._feature_shape(layer, tile.py1 - tile.py0, tile.px1 - tile.px0)
            is_mean = (objective.style_loss.statistics_reduction == "mean" if layer in objective.style_layers
                       else objective.content_loss.reduction == "mean")
            shares[layer] = jnp.float32(h * w / counts[layer] if is_mean else 1.0)
        return shares

    def value(self, objective: StyleObjective, params, image: jnp.ndarray, targets: Targets):
        """``(total, terms)`` at a ``(1, H, W, 3)`` image: the statistics pass alone."""
        stats, content = self._accumulate(objective, params, self._plan(objective, image, targets))
        (style, _), _ = self._loss_from_statistics(objective, stats, targets)
        tv, _ = self._tv(objective, image)
        return _total(objective.content_weight * content, style, tv)

    def value_and_grad(self, objective: StyleObjective, params, image: jnp.ndarray, targets: Targets):
        """``((total, terms), gradient)`` of the objective at a ``(1, H, W, 3)`` image, exactly as
        ``jax.value_and_grad(objective, argnums=1, has_aux=True)`` would give it untiled."""
        plan = self._plan(objective, image, targets)
        stats, content = self._accumulate(objective, params, plan)
        (style, _), d_stats = self._loss_from_statistics(objective, stats, targets)
        tv, grad = self._tv(objective, image)
        for tile, window, masks, shares, crops in plan:
            g = self._surrogate_grad(objective, params, window, masks, crops, shares, d_stats)
            grad = self._add(grad, g, tile.py0, tile.px0)
        return _total(objective.content_weight * content, style, tv), grad

    def evaluator(self):
        """:meth:`value_and_grad` in the driver's batched shapes (one run: the objective's leaves
        and the keys have a leading axis of 1, images are ``(1, 1, H, W, 3)``), for
        :func:`neuralstyle.optim.driver.optimize`'s ``evaluator``."""

        def unbatch(objective, images, targets):
            if images.shape[0] != 1:
                raise ConfigError("tiled optimization runs one image at a time (N = 1)")
            return (jax.tree.map(lambda leaf: leaf[0], objective), images[0],
                    targets._replace(key=targets.key[0]))

        def batch(total, terms):
            return jnp.reshape(total, (1,)), {k: jnp.reshape(v, (1,)) for k, v in terms.items()}

        def evaluate(objective, params, images, targets):
            single, image, single_targets = unbatch(objective, images, targets)
            (total, terms), grad = self.value_and_grad(single, params, image, single_targets)
            return batch(total, terms), grad[None]

        def value(objective, params, images, targets):
            single, image, single_targets = unbatch(objective, images, targets)
            return batch(*self.value(single, params, image, single_targets))

        evaluate.value = value  # the loss alone: the statistics pass only
        return evaluate


# --------------------------------------------------------------------------- compiled pieces


def _total(content, style, tv):
    """``(total, terms)`` as :meth:`StyleObjective.__call__` returns them."""
    terms = {"content": content, "style": style, "tv": tv}
    return content + style + tv, terms


def _tile_statistics(objective, params, window, masks, content_targets, shares):
    """Style statistics of the window's interior (each times its share) and its content term."""
    features = objective.extractor.apply(params, window)
    stats = {n: jax.tree.map(lambda a: shares[n] * a,
                             moments_of(objective.style_loss, features[n] * masks[n]))
             for n in objective.style_layers}
    content = 0.0
    if content_targets is not None:
        for n, w in zip(objective.content_layers, objective.content_layer_weights):
            error = objective.content_loss(features[n] * masks[n], content_targets[n] * masks[n])
            content = content + w * shares[n] * jnp.sum(error)
    return stats, content


def _loss_from_statistics(objective, stats, targets):
    """The weighted style term from the whole image's statistics."""
    style = 0.0
    for k, target in enumerate(targets.style):
        for i, (n, w) in enumerate(zip(objective.style_layers, objective.style_layer_weights)):
            key = jax.random.fold_in(targets.key, i)
            style = style + targets.blend[k] * w * objective.style_loss.compare(stats[n], target[n], key)
    style = objective.style_weight * jnp.sum(style)
    return style, style


def _tile_surrogate(objective, params, window, masks, content_targets, shares, d_stats):
    """``<dL/dA, A_tile(window)> + content_weight * content_tile(window)``: its gradient with
    respect to ``window`` is the window's share of the whole objective's gradient."""
    stats, content = _tile_statistics(objective, params, window, masks, content_targets, shares)
    linear = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(d_stats), jax.tree.leaves(stats)))
    return linear + objective.content_weight * content


@functools.partial(jax.jit, static_argnums=(3, 4))
def _crop(x, top, left, height: int, width: int):
    """``x[:, top:top + height, left:left + width]`` with traced offsets: one program per crop
    shape, where eager slicing compiles one per tile position.  The crop must lie inside ``x``
    (``dynamic_slice`` would move it)."""
    if height > x.shape[1] or width > x.shape[2]:
        raise ValueError(f"a {height}x{width} crop does not fit {x.shape}")
    return jax.lax.dynamic_slice(x, (0, top, left, 0), (x.shape[0], height, width, x.shape[3]))


def _window_of(image, tile: Tile):
    """The tile's window (interior and halo) of a ``(1, H, W, 3)`` image."""
    return _crop(image, tile.py0, tile.px0, tile.py1 - tile.py0, tile.px1 - tile.px0)


@functools.partial(jax.jit, static_argnames="weights")
def _style_targets(objective: StyleObjective, moments: list, weights: tuple):
    """``(statistics, weights)`` of :func:`~neuralstyle.objective.mix_style_statistics` from each
    style image's accumulated moments, in one program (run eagerly, the Wasserstein family's
    matrix square roots and the mixture compiled about 120 small programs)."""
    loss = objective.style_loss
    return mix_style_statistics(loss, [{n: target_of_moments(loss, m) for n, m in each.items()}
                                       for each in moments], weights)


@jax.jit
def _add_trees(a, b):
    """Leafwise ``a + b`` in one program (the statistics pass's running sums)."""
    return jax.tree.map(jnp.add, a, b)


def _add_window(total, window, y, x):
    """``total[:, y:y+h, x:x+w] += window`` with dynamic offsets (one compile per window shape)."""
    start = (0, y, x, 0)
    current = jax.lax.dynamic_slice(total, start, window.shape)
    return jax.lax.dynamic_update_slice(total, current + window, start)
