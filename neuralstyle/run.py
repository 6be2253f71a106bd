"""Command-line entry: ``python -m neuralstyle.run +experiment=vgg19_wave [key=value ...]``.

Hydra stays at this edge: :func:`main` composes the config and calls :func:`run_from_config`,
which instantiates the components and calls the Hydra-free :func:`neuralstyle.stylize`.
A run writes into its Hydra run directory ``result.png``, ``metrics.json``, ``config.yaml``
(the resolved config) and ``snapshots/step_NNNNN.png``, then prints the path of ``result.png``.
``main`` returns the final loss, so sweepers can minimize it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .entry import run_entry  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import InstantiationException  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from .color import apply_color_control  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError, ImageError, Interrupted, NeuralStyleError, NonFiniteLossError,
)
from .images import atomic_write, image_size, load_mask, resolve_image, save_image  # noqa: E402
from .objective import StyleObjective  # noqa: E402
from .stylize import (  # noqa: E402
    check_memory, initial_image, load_content_and_style, stylize, stylize_pyramid,
)


def config_dir() -> Path:
    """The config tree: shipped inside the package in a wheel, ``conf/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"neuralstyle's config tree is missing (looked in {here / 'conf'})")


def _instantiate(node: DictConfig, key: str):
    """``hydra.utils.instantiate`` that reports our own errors without Hydra's wrapping."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, NeuralStyleError):
            raise type(cause)(f"{key}: {cause}") from None
        raise ConfigError(f"{key}: {err}") from None


def _plain(value):
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def build_objective(cfg: DictConfig) -> StyleObjective:
    """The objective described by ``cfg`` (backbone, layers, weights and loss components)."""
    backbone = _instantiate(cfg.backbone, "backbone")
    return StyleObjective.build(
        backbone,
        content_layers=list(cfg.content_layers),
        style_layers=list(cfg.style_layers),
        content_layer_weights=_plain(cfg.content_layer_weights),
        style_layer_weights=_plain(cfg.style_layer_weights),
        content_weight=float(cfg.content_weight),
        style_weight=float(cfg.style_weight),
        tv_weight=float(cfg.tv_weight),
        content_loss=_instantiate(cfg.content_loss, "content_loss"),
        style_loss=_instantiate(cfg.style_loss, "style_loss"),
        tv_loss=_instantiate(cfg.tv_loss, "tv_loss"),
    )


#: Keys checked before any heavy work: (key, kind, description of what is accepted).
CHECKED_KEYS = (
    ("size", "positive_int", "a whole number of pixels >= 1 (the output's long edge)"),
    ("steps", "non_negative_int", "a whole number >= 0"),
    ("seed", "int", "a whole number"),
    ("snapshot_every", "non_negative_int", "a whole number >= 0 (0: no snapshots)"),
    ("style_scale", "positive_float", "a finite number > 0"),
    ("content_weight", "non_negative_float", "a finite number >= 0"),
    ("style_weight", "non_negative_float", "a finite number >= 0"),
    ("tv_weight", "non_negative_float", "a finite number >= 0"),
    ("pyramid.levels", "positive_int", "a whole number >= 1"),
)


def _valid(value, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind.endswith("int"):
        if not isinstance(value, int):
            return False
        return {"positive_int": value >= 1, "non_negative_int": value >= 0}.get(kind, True)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 if kind == "positive_float" else value >= 0


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the key for the first value of :data:`CHECKED_KEYS`
    that is not what it should be (``size=abc``, ``steps=-1``, ``style_scale=inf``, ...)."""
    for key, kind, accepted in CHECKED_KEYS:
        value = OmegaConf.select(cfg, key)
        if not _valid(value, kind):
            raise ConfigError(f"{key} must be {accepted}, got {value!r}")


def planned_shape(path: Path, size: int) -> tuple[int, int]:
    """``(H, W)`` of ``path`` resized to long edge ``size``, from the file's header alone."""
    width, height = image_size(path)
    scale = size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def run_from_config(cfg: DictConfig, output_dir: Path) -> float:
    """Run one stylization described by ``cfg`` into ``output_dir``; return the final loss.

    ``result.png`` is written before ``metrics.json``: a ``metrics.json`` (the record of a
    finished run) never exists without its image.  Ctrl-C saves the current image as
    ``snapshots/interrupted_step_NNNNN.png`` and re-raises :class:`~neuralstyle.errors.Interrupted`.
    """
    output_dir = Path(output_dir)
    if "transform" in cfg:  # a fast_* experiment (conf/train.yaml's keys)
        raise ConfigError("this experiment trains a feed-forward network: run it with "
                          "python -m neuralstyle.train +experiment=NAME data.dir=/path/to/photos")
    check_config(cfg)
    content_path = _resolve("content", cfg.content, cfg.image_dir)
    try:
        shape = planned_shape(content_path, int(cfg.size))
    except ImageError as err:
        raise ImageError(f"content: {err}") from None
    optimizer = _instantiate(cfg.optimizer, "optimizer")
    check_memory(shape, optimizer, what=f"size={int(cfg.size)} ({content_path})")
    content, style = load_content_and_style(
        str(content_path), _plain(cfg.style), size=int(cfg.size), style_scale=float(cfg.style_scale),
        image_dir=cfg.image_dir,
    )
    masks = None
    if cfg.style_masks is not None:
        masks = [load_mask(path, content.shape[:2]) for path in cfg.style_masks]
    content, style, finish = apply_color_control(content, style, cfg.preserve_colors)
    start = initial_image(
        cfg.init.kind, content, style, seed=int(cfg.seed),
        noise_mean=float(cfg.init.get("mean", 0.5)), noise_std=float(cfg.init.get("std", 0.25)),
        path=cfg.init.get("path"),
    )
    objective = build_objective(cfg)
    objective.extractor.check_input(content.shape, f"content image {content_path}")
    atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    try:
        common = dict(
            optimizer=optimizer, init=start, seed=int(cfg.seed), progress=bool(cfg.progress),
            style_blend=_plain(cfg.style_blend_weights), style_masks=masks,
            snapshot_every=int(cfg.snapshot_every), snapshot_dir=output_dir / "snapshots",
        )
        if int(cfg.pyramid.levels) > 1:
            steps = _plain(cfg.pyramid.steps)
            result = stylize_pyramid(objective, content, style, levels=int(cfg.pyramid.levels),
                                     steps=int(cfg.steps) if steps is None else steps, **common)
        else:
            result = stylize(objective, content, style, steps=int(cfg.steps), **common)
    except NonFiniteLossError as err:
        if err.last_good_image is not None:
            kept = save_image(finish(err.last_good_image), output_dir / "last_finite.png")
            raise NonFiniteLossError(err.step, err.last_good_image, err.last_good_step, err.terms) \
                from ValueError(f"last finite image saved to {kept}")
        raise
    except Interrupted as stop:
        raise save_interrupted(stop, finish, output_dir / "snapshots") from None
    metrics = {
        "content": str(cfg.content),
        "style": _plain(cfg.style),
        "preserve_colors": cfg.preserve_colors,
        "experiment": _experiment_name(),
        **result.metrics,
        "optimizer_config": OmegaConf.to_container(cfg.optimizer, resolve=True),
    }
    result_path = save_image(finish(result.image), output_dir / "result.png")
    atomic_write(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    print(result_path.resolve())
    return metrics["final"]["total"]


def _resolve(role: str, name, image_dir) -> Path:
    try:
        return resolve_image(name, image_dir)
    except ImageError as err:
        raise ImageError(f"{role}: {err}") from None


def save_interrupted(stop: Interrupted, finish, folder: Path) -> Interrupted:
    """Save the image a Ctrl-C interrupted as ``folder/interrupted_step_NNNNN.png``; return the
    :class:`Interrupted` to re-raise, its message naming the file."""
    if stop.image is None:
        return stop
    path = save_image(finish(stop.image), Path(folder) / f"interrupted_step_{stop.step:05d}.png")
    return Interrupted(stop.step, stop.image, f"the image after step {stop.step} is saved as {path}")


def _experiment_name():
    try:
        choices = HydraConfig.get().runtime.choices
    except ValueError:  # not running under Hydra
        return None
    return choices.get("experiment")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> float:
    return run_entry(run_from_config, cfg)


if __name__ == "__main__":
    main()
