r"""Loss functions of optimization-based style transfer, as pure functions of arrays.

Feature maps are ``(batch, height, width, channels)`` arrays (NHWC, the Keras layout); every
function is plain ``jax.numpy`` (jit it, vmap it, differentiate it) and returns one value per
batch element.  One module per family:

- :mod:`.content`: content loss (Gatys et al. 2016, eq. 1);
- :mod:`.tv`: total-variation regularizers;
- :mod:`.style_loss`: :class:`StyleLoss`, the pair of pure functions every style family is;
- :mod:`.gram`: Gram-matrix style loss (Gatys et al. 2016) and its normalizations;
- :mod:`.statistics`: mean/std (AdaIN) and batch-norm statistics losses;
- :mod:`.mmd`: maximum mean discrepancy (Li et al. 2017);
- :mod:`.histogram`: sliced Wasserstein (Heitz et al. 2021) and histogram (Risser et al. 2017);
- :mod:`.mrf`: patch matching (Li & Wand 2016);
- :mod:`.wasserstein`: Wasserstein-2 distance between Gaussian fits (Dowson & Landau 1982).
"""

from .content import CONTENT_NORMALIZATIONS, content_loss
from .gram import GRAM_NORMALIZATIONS, gram_loss, gram_matrix, gram_style_layer_loss
from .histogram import histogram_loss, match_histograms, resample_sorted, sliced_wasserstein_loss
from .mmd import MMD_KERNELS, kernel_matrix, mmd_loss, mmd_squared
from .mrf import extract_patches, mrf_loss
from .statistics import bn_statistics_loss, channel_statistics, mean_std_loss
from .style_loss import StyleLoss
from .tv import TV_KINDS, total_variation, total_variation_loss
from .wasserstein import (
    blend_gaussian_statistics, blend_targets, gaussian_statistics, gaussian_target,
    gaussian_wasserstein_loss, gaussian_wasserstein_squared, sqrtm_newton_schulz, trace_sqrtm,
)

__all__ = [
    "CONTENT_NORMALIZATIONS", "content_loss", "GRAM_NORMALIZATIONS", "gram_loss", "gram_matrix",
    "gram_style_layer_loss", "histogram_loss", "match_histograms", "resample_sorted",
    "sliced_wasserstein_loss", "MMD_KERNELS", "kernel_matrix", "mmd_loss", "mmd_squared",
    "extract_patches", "mrf_loss", "bn_statistics_loss", "channel_statistics", "mean_std_loss",
    "StyleLoss", "TV_KINDS", "total_variation", "total_variation_loss",
    "blend_gaussian_statistics", "blend_targets", "gaussian_statistics", "gaussian_target",
    "gaussian_wasserstein_loss", "gaussian_wasserstein_squared", "sqrtm_newton_schulz", "trace_sqrtm",
]
