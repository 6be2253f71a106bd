"""Command-line entry: ``python -m neuralstyle.run +experiment=vgg19_wave [key=value ...]``.

Hydra stays at this edge: :func:`main` composes the config and calls :func:`run_from_config`,
which gets the run's parts from :func:`neuralstyle.recipe.build_run` and calls the Hydra-free
:func:`neuralstyle.stylize` (or :func:`~neuralstyle.stylize_pyramid`).
A run writes into its Hydra run directory ``result.png``, ``metrics.json``, ``config.yaml``
(the resolved config) and ``snapshots/step_NNNNN.png``, then prints the path of ``result.png``.
The config section ``output`` chooses the result's format and depth for print (``output.format=tiff``
writes ``result.tiff``; ``output.bit_depth=16``); the content image's ICC profile is carried into
the result (see :func:`result_options`).
``main`` returns the final loss, so sweepers can minimize it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .entry import run_entry, with_cpu_schedule  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import ConfigError, Interrupted, NonFiniteLossError  # noqa: E402
from .images import atomic_write, save_image  # noqa: E402
from .images.io import check_output_options, icc_description, read_icc_profile  # noqa: E402
from .recipe import build_objective, build_run, config_dir  # noqa: E402,F401  (re-exported)
from .stylize import stylize, stylize_pyramid  # noqa: E402


def run_from_config(cfg: DictConfig, output_dir: Path) -> float:
    """Run one stylization described by ``cfg`` into ``output_dir``; return the final loss.

    The parts come from :func:`neuralstyle.recipe.build_run`.  ``result.png`` is written before
    ``metrics.json``: a ``metrics.json`` (the record of a finished run) never exists without its
    image.  Ctrl-C saves the current image as ``snapshots/interrupted_step_NNNNN.png`` and
    re-raises :class:`~neuralstyle.errors.Interrupted`.  The result's name, format and depth come
    from ``cfg.output`` (:func:`result_options`), checked before anything else.
    """
    output_dir = Path(output_dir)
    result_name, bit_depth = result_options(cfg)
    parts = build_run(cfg)
    icc_profile = read_icc_profile(parts.content_path)
    atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    common = dict(
        optimizer=parts.optimizer, init=parts.initial_image(int(cfg.seed)), seed=int(cfg.seed),
        progress=bool(cfg.progress), style_blend=parts.style_blend, style_masks=parts.masks,
        snapshot_every=int(cfg.snapshot_every), snapshot_dir=output_dir / "snapshots",
        average_decay=parts.average_decay, tile_size=parts.tile_size, tile_halo=parts.tile_halo,
    )
    try:
        if parts.scales is not None:
            result = stylize_pyramid(parts.objective, parts.content, parts.style,
                                     shapes=parts.scales, steps=parts.scale_steps,
                                     warm_start=parts.warm_start, **common)
        else:
            result = stylize(parts.objective, parts.content, parts.style, steps=int(cfg.steps),
                             **common)
    except NonFiniteLossError as err:
        if err.last_good_image is not None:
            kept = save_image(parts.finish(err.last_good_image), output_dir / "last_finite.png")
            raise NonFiniteLossError(err.step, err.last_good_image, err.last_good_step, err.terms) \
                from ValueError(f"last finite image saved to {kept}")
        raise
    except Interrupted as stop:
        raise save_interrupted(stop, parts.finish, output_dir / "snapshots") from None
    metrics = {
        "content": str(cfg.content),
        "style": OmegaConf.to_container(cfg.style) if OmegaConf.is_config(cfg.style) else cfg.style,
        "preserve_colors": cfg.preserve_colors,
        "experiment": _experiment_name(),
        **result.metrics,
        "optimizer_config": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "output": output_record(result_name, bit_depth, icc_profile),
    }
    result_path = save_image(parts.finish(result.image), output_dir / result_name,
                             bit_depth=bit_depth, icc_profile=icc_profile)
    atomic_write(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    print(result_path.resolve())
    return metrics["final"]["total"]


def result_options(cfg) -> tuple[str, int]:
    """``(file name, bit depth)`` of a run's result from the config section ``output``:
    ``format`` (``png``, the default, or ``tiff``) names it ``result.png`` or ``result.tiff``,
    ``bit_depth`` is 8 (default) or 16 bits per channel.  A config without the section gets the
    defaults.  Raises :class:`ConfigError` naming the key for any other value."""
    node = cfg.get("output") if hasattr(cfg, "get") else None
    if node is None:
        node = {}
    if not hasattr(node, "get"):
        raise ConfigError(f"output must be a section (output.format=png|tiff, "
                          f"output.bit_depth=8|16), got {node!r}")
    unknown = sorted(set(node) - {"format", "bit_depth"})
    if unknown:
        raise ConfigError(f"output has unknown key(s) {unknown}; expected format, bit_depth")
    suffix, bit_depth = check_output_options(node.get("format", "png"), node.get("bit_depth", 8))
    return "result" + suffix, bit_depth


def output_record(name: str, bit_depth: int, icc_profile) -> dict:
    """What ``metrics.json`` says of the result file: name, format, bit depth and colour space
    (the embedded profile's description, or ``"sRGB (assumed)"`` when the content had none)."""
    return {"file": name, "format": Path(name).suffix.lstrip("."),
            "bit_depth": bit_depth, "icc_profile": icc_description(icc_profile)}


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
    return run_entry(with_cpu_schedule(run_from_config), cfg)  # cpu_schedule: before JAX starts


if __name__ == "__main__":
    main()
