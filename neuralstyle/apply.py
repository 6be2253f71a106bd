"""Command-line entry: ``python -m neuralstyle.apply model=runs/train/fast_wave/model.keras input=photo.jpg``.

Stylizes an image, or every image in a folder, with a transform network trained by
``python -m neuralstyle.train`` (see :mod:`neuralstyle.fast.apply`).  Results go to ``output``
(an image path for a single input, or a folder), by default into the Hydra run directory; the
path of every written image is printed.  No input is ever written over and no two inputs share a
result: ``cat.jpg`` and ``cat.png`` become ``cat.jpg.png`` and ``cat.png.png``, and an input whose
result would replace an input or a file that ``apply`` did not write is skipped; each rename and
skip is printed on stderr (the rules: :mod:`neuralstyle.fast.apply`).
"""

from __future__ import annotations

from pathlib import Path

from .entry import run_entry  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import ConfigError  # noqa: E402
from .recipe import config_dir  # noqa: E402


def apply_from_config(cfg: DictConfig, output_dir: Path) -> list[Path]:
    """Stylize ``cfg.input`` with ``cfg.model``; return the written paths."""
    from .fast.apply import APPLY_COLORS, Stylizer, stylize_files

    for key in ("model", "input"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] is None:
            raise ConfigError(f"{key}= is required (python -m neuralstyle.apply "
                              "model=runs/train/NAME/model.keras input=photo.jpg)")
    if cfg.preserve_colors not in APPLY_COLORS:
        raise ConfigError(f"preserve_colors must be one of {APPLY_COLORS}, got {cfg.preserve_colors!r}")
    stylizer = Stylizer(cfg.model)
    written = stylize_files(stylizer, cfg.input, cfg.output, Path(output_dir),
                            size=cfg.size, preserve_colors=cfg.preserve_colors,
                            progress=bool(cfg.progress))
    for path in written:
        print(Path(path).resolve())
    return written


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="apply")
def main(cfg: DictConfig) -> None:
    run_entry(apply_from_config, cfg)


if __name__ == "__main__":
    main()
