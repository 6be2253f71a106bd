"""Command-line entry: ``python -m neuralstyle.apply model=runs/train/fast_wave/model.keras input=photo.jpg``
or ``python -m neuralstyle.apply model=arbitrary style=great_wave input=photo.jpg``.

Stylizes an image, or every image in a folder, with a transform network trained by
``python -m neuralstyle.train`` (see :mod:`neuralstyle.fast.stylizer`), or with the arbitrary-style
network of Ghiasi et al. 2017 and any style image (:mod:`neuralstyle.arbitrary`; ``strength``,
several styles blended by ``style_weights``, ``style_size``; ``weights`` names a pair trained
by ``python -m neuralstyle.train +experiment=arbitrary_...`` instead of the ported weights).
Results go to ``output`` (an image path for a single input, or a folder), by default into the
Hydra run directory; the path of every written image is printed.  No input is ever written over and no two inputs share a
result: ``cat.jpg`` and ``cat.png`` become ``cat.jpg.png`` and ``cat.png.png``, and an input whose
result would replace an input or a file that ``apply`` did not write is skipped; each rename and
skip is printed on stderr (the rules: :mod:`neuralstyle.fast.stylizer`).
For print: ``bit_depth=16`` writes 16-bit results, ``format=tiff`` names generated results
``<stem>.tiff`` (an ``output=`` file keeps its own suffix), and every result carries the ICC profile
of its input photo.  ``bucket`` (default 128 px; null: off) runs photos of different sizes through one
compiled program per size bucket, with the same result (:mod:`neuralstyle.fast.buckets`).
``overlap`` (default true) compiles the programs for the photos' sizes in a background thread
while earlier photos are stylized, and decodes and writes photos in another
(:func:`neuralstyle.fast.stylize_files`); ``overlap=false`` does one thing after the other.
"""

from __future__ import annotations

from pathlib import Path

from .entry import run_entry  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import ConfigError, NeuralStyleError  # noqa: E402
from .recipe import config_dir  # noqa: E402


def apply_from_config(cfg: DictConfig, output_dir: Path) -> list[Path]:
    """Stylize ``cfg.input`` with ``cfg.model`` (a trained network, or ``arbitrary`` with
    ``cfg.style``); return the written paths."""
    from .fast.stylizer import APPLY_COLORS, Stylizer, input_files, stylize_files

    for key in ("model", "input"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] is None:
            raise ConfigError(f"{key}= is required (python -m neuralstyle.apply "
                              "model=runs/train/NAME/model.keras input=photo.jpg, or "
                              "model=arbitrary style=great_wave input=photo.jpg)")
    if cfg.preserve_colors not in APPLY_COLORS:
        raise ConfigError(f"preserve_colors must be one of {APPLY_COLORS}, got {cfg.preserve_colors!r}")
    ext, bit_depth = output_format(cfg)
    overlap = cfg.get("overlap", True)
    if not isinstance(overlap, bool):
        raise ConfigError(f"overlap must be true or false, got {overlap!r}")
    bucket_option(cfg)  # a bad bucket fails before any network is loaded
    if str(cfg.model) == "arbitrary":
        input_files(cfg.input)  # a missing or empty input fails before the network is built
        stylizer = arbitrary_stylizer(cfg)
    elif cfg.get("style") is not None:
        raise ConfigError("style= applies to model=arbitrary only: a trained network has its style "
                          "built in")
    elif cfg.get("weights") is not None:
        raise ConfigError("weights= applies to model=arbitrary only (a trained arbitrary-style pair); "
                          "a trained transform network is given as model=<its model.keras>")
    else:
        stylizer = Stylizer(cfg.model, bucket=bucket_option(cfg))
    written = stylize_files(stylizer, cfg.input, cfg.output, Path(output_dir),
                            size=cfg.size, preserve_colors=cfg.preserve_colors,
                            progress=bool(cfg.progress), bit_depth=bit_depth, ext=ext,
                            overlap=overlap)
    for path in written:
        print(Path(path).resolve())
    return written


def output_format(cfg: DictConfig) -> tuple[str, int]:
    """``(suffix of generated result names, bit depth)`` from the keys ``format`` (``png``,
    ``tiff``; null: png) and ``bit_depth`` (8 or 16), checked against an ``output=`` file name
    (a single input written to ``output=result.jpg`` keeps that name, so it must agree)."""
    from .images.io import OUTPUT_FORMATS, SIXTEEN_BIT_SUFFIXES, check_output_options

    fmt = cfg.get("format")
    ext, bit_depth = check_output_options("png" if fmt is None else fmt, cfg.get("bit_depth", 8),
                                          "format", "bit_depth")
    named = Path(str(cfg.output)).suffix.lower() if cfg.get("output") is not None else ""
    if named and Path(str(cfg.input)).expanduser().is_file():  # output= names the result file
        if fmt is not None and OUTPUT_FORMATS.get(named.lstrip(".")) != ext:
            raise ConfigError(f"format={fmt} disagrees with output={cfg.output}; the file's suffix "
                              "decides its format (drop format=, or name a .png/.tiff file)")
        if bit_depth == 16 and named not in SIXTEEN_BIT_SUFFIXES:
            raise ConfigError(f"bit_depth=16 needs a .png, .tif or .tiff output file, not "
                              f"output={cfg.output} (bit_depth must be 8 for that format)")
    return ext, bit_depth


def bucket_option(cfg: DictConfig):
    """The ``bucket`` key (a step in px, a list of sides, or null; absent: the default), checked
    (:func:`neuralstyle.fast.buckets.check_bucket`)."""
    from .fast.buckets import DEFAULT_BUCKET, check_bucket

    bucket = cfg.get("bucket", DEFAULT_BUCKET)
    if OmegaConf.is_config(bucket):
        bucket = OmegaConf.to_container(bucket)
    check_bucket(bucket)
    return bucket


def arbitrary_stylizer(cfg: DictConfig):
    """``(image, preserve_colors) -> image`` with the arbitrary-style network and ``cfg.style``
    (one image or several blended by ``cfg.style_weights``) at ``cfg.strength``."""
    from .arbitrary import ArbitraryStylizer
    from .images import load_image, resolve_image

    if cfg.get("style") is None:
        raise ConfigError("model=arbitrary needs style= (a path or an example image name, or a "
                          "list of them), e.g. style=great_wave")
    names = OmegaConf.to_container(cfg.style) if OmegaConf.is_config(cfg.style) else [cfg.style]
    if not names:
        raise ConfigError("style= is an empty list; give at least one style image")
    strength = cfg.strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ConfigError(f"strength must be a number between 0 and 1, got {strength!r}")
    weights = OmegaConf.to_container(cfg.style_weights) if cfg.style_weights is not None else None
    styles = []
    for i, name in enumerate(names):
        role = "style" if len(names) == 1 else f"style[{i}]"
        try:
            styles.append(load_image(resolve_image(name, cfg.image_dir)))
        except NeuralStyleError as err:
            raise type(err)(f"{role}: {err}") from None
    network = ArbitraryStylizer(*arbitrary_models(cfg.get("weights")), style_size=int(cfg.style_size),
                                bucket=bucket_option(cfg))
    embedding = network.blend(network.embed(styles), weights)

    def stylize(image, preserve_colors=None):
        return network.stylize(image, embedding, strength=float(strength),
                               preserve_colors=preserve_colors)

    def precompile(shape):  # what stylize will run for an image of this shape (stylize_files)
        network.precompile(shape, strength=float(strength))

    stylize.precompile = precompile
    stylize.plan_sizes = network.plan_sizes
    return stylize


def arbitrary_models(weights) -> tuple:
    """``(predictor, transformer)`` for ``weights``: ``(None, None)`` (the ported weights) when
    null, else the pair trained by ``python -m neuralstyle.train +experiment=arbitrary_...`` (its
    ``model/`` folder or a file in it; :func:`neuralstyle.arbitrary.load_arbitrary`)."""
    if weights is None:
        return None, None
    from .arbitrary import load_arbitrary

    return load_arbitrary(str(weights))


@hydra.main(version_base="1.3", config_path=str(config_dir("apply")), config_name="config")
def main(cfg: DictConfig) -> None:
    run_entry(apply_from_config, cfg)


if __name__ == "__main__":
    main()
