r"""Colour controls of Gatys, Ecker, Bethge, Hertzmann & Shechtman, "Controlling Perceptual
Factors in Neural Style Transfer", CVPR 2017, section 5.

* **Luminance-only transfer** (sec. 5.1, second method): style transfer runs on the luminance
  channels only; the result's luminance is combined with the content's chrominance (YIQ).
* **Colour histogram matching** (sec. 5.1, first method): the style image's colours are mapped
  onto the content's by a linear transform :math:`x' = A(x - \mu_s) + \mu_c` with
  :math:`A = \Sigma_c^{1/2}\Sigma_s^{-1/2}` before stylizing.

Images are float ``(H, W, 3)`` RGB arrays in ``[0, 1]``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

# NTSC RGB -> YIQ (the colour space the paper uses).
RGB_TO_YIQ = np.array([
    [0.299, 0.587, 0.114],
    [0.595716, -0.274453, -0.321263],
    [0.211456, -0.522591, 0.311135],
], dtype=np.float64)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)

PRESERVE_COLORS = (None, "luminance", "histogram")


def rgb_to_yiq(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64) @ RGB_TO_YIQ.T


def yiq_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float64) @ YIQ_TO_RGB.T


def luminance_image(image: np.ndarray) -> np.ndarray:
    """The luminance Y of ``image`` as a grey RGB image (Y in all three channels)."""
    y = rgb_to_yiq(image)[..., :1]
    return np.repeat(y, 3, axis=-1).astype(np.float32)


def match_luminance(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Grey style luminance with the content luminance's mean and standard deviation (the
    paper's luminance histogram matching, eq. 9), clipped to [0, 1]."""
    ys, yc = rgb_to_yiq(style)[..., 0], rgb_to_yiq(content)[..., 0]
    matched = (ys - ys.mean()) / (ys.std() + 1e-8) * yc.std() + yc.mean()
    return np.repeat(np.clip(matched, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


def combine_luminance(stylized: np.ndarray, content: np.ndarray, clip: bool = True) -> np.ndarray:
    """The stylized image's luminance (mean of its channels' Y) with the content's I and Q.

    Without clipping the result's chrominance equals the content's exactly; clipping to [0, 1]
    changes it only where the combination leaves the RGB cube.
    """
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = rgb_to_yiq(stylized)[..., 0]
    rgb = yiq_to_rgb(yiq)
    return (np.clip(rgb, 0.0, 1.0) if clip else rgb).astype(np.float32)


def _sqrtm(cov: np.ndarray, inverse: bool = False) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 1e-8)
    power = -0.5 if inverse else 0.5
    return (vectors * values**power) @ vectors.T


def match_color_histogram(style: np.ndarray, content: np.ndarray, clip: bool = True) -> np.ndarray:
    r"""Map the style image's colours onto the content's mean and covariance (paper eq. 7-8):
    :math:`x' = \Sigma_c^{1/2}\Sigma_s^{-1/2}(x - \mu_s) + \mu_c`."""
    s = np.asarray(style, np.float64).reshape(-1, 3)
    c = np.asarray(content, np.float64).reshape(-1, 3)
    mu_s, mu_c = s.mean(0), c.mean(0)
    transform = _sqrtm(np.cov(c, rowvar=False, bias=True)) @ _sqrtm(np.cov(s, rowvar=False, bias=True), inverse=True)
    mapped = (s - mu_s) @ transform.T + mu_c
    mapped = np.clip(mapped, 0.0, 1.0) if clip else mapped
    return mapped.reshape(np.shape(style)).astype(np.float32)


def check_preserve_colors(mode) -> None:
    if mode not in PRESERVE_COLORS:
        raise ConfigError(f"preserve_colors must be one of {PRESERVE_COLORS}, got {mode!r}")


def apply_color_control(content: np.ndarray, style, mode):
    """Prepare ``(content, style)`` for a colour-preserving run and return the function that
    finishes its result: ``content', style', finish = apply_color_control(content, style, mode)``.

    ``mode`` is ``None`` (no control), ``"histogram"`` (the style's colours matched to the
    content's) or ``"luminance"`` (optimize grey luminance images, then put the content's
    chrominance back).  ``style`` may be a list of images.
    """
    check_preserve_colors(mode)
    styles = style if isinstance(style, (list, tuple)) else [style]
    if mode == "histogram":
        styles = [match_color_histogram(s, content) for s in styles]
    elif mode == "luminance":
        styles = [match_luminance(s, content) for s in styles]
    new_style = styles if isinstance(style, (list, tuple)) else styles[0]
    if mode != "luminance":
        return content, new_style, lambda image: image
    return luminance_image(content), new_style, lambda image: combine_luminance(image, content)
