"""Command-line entry: ``python -m neuralstyle.train +experiment=fast_wave data.dir=/path/to/train2014``.

Trains a feed-forward transform network (Johnson et al. 2016) with the Hydra-free pieces of
:mod:`neuralstyle.fast`.  The run directory is ``runs/train/${name}`` (no timestamp): running the
same command again resumes from the last checkpoint in it.  It receives ``checkpoints/``,
``model.keras``, ``validation/``, ``log.jsonl``, ``metrics.json`` and ``config.yaml``; the path of
``model.keras`` is printed at the end.  ``main`` returns the final loss (for sweepers).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import ConfigError, NeuralStyleError, exit_with_message  # noqa: E402
from .images import atomic_write, load_image, resolve_image  # noqa: E402
from .run import _instantiate, build_objective, config_dir  # noqa: E402

#: Config keys that define a training run: a checkpoint is resumed only if they are unchanged.
FINGERPRINT_KEYS = (
    "style", "style_size", "size", "batch_size", "seed", "data.dir", "transform", "backbone",
    "optimizer", "style_loss", "content_loss", "tv_loss", "content_layers",
    "content_layer_weights", "style_layers", "style_layer_weights", "content_weight",
    "style_weight", "tv_weight",
)


def fingerprint(cfg: DictConfig) -> dict:
    """The settings of ``cfg`` that a resumed run must share with its checkpoint."""
    out = {}
    for key in FINGERPRINT_KEYS:
        value = OmegaConf.select(cfg, key)
        if key == "data.dir" and value is not None:
            value = str(Path(value).expanduser().resolve())
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _image(role: str, name, image_dir, long_edge):
    try:
        return load_image(resolve_image(name, image_dir), long_edge)
    except NeuralStyleError as err:
        raise type(err)(f"{role}: {err}") from None


def train_from_config(cfg: DictConfig, output_dir: Path, callback=None) -> float:
    """Train the network described by ``cfg`` into ``output_dir``; return the final loss."""
    from .fast import photo_batches, train, transform_net

    output_dir = Path(output_dir)
    if OmegaConf.is_missing(cfg.data, "dir") or cfg.data.dir is None:
        raise ConfigError("data.dir is required: a folder of training photos, e.g. "
                          "data.dir=/path/to/coco/train2014")
    if "transform" not in cfg:
        raise ConfigError("this config has no `transform` section; use a fast_* experiment")
    style_size = None if cfg.style_size is None else int(cfg.style_size)
    style = _image("style", cfg.style, cfg.image_dir, style_size)
    validation = [_image(f"validation.images[{i}]", name, cfg.image_dir, cfg.validation.size)
                  for i, name in enumerate(cfg.validation.images or [])]
    objective = build_objective(cfg)
    optimizer = _instantiate(cfg.optimizer, "optimizer")
    batches, count = photo_batches(cfg.data.dir, int(cfg.size), int(cfg.batch_size),
                                   seed=int(cfg.seed), num_threads=int(cfg.data.threads),
                                   prefetch=int(cfg.data.prefetch))
    steps = cfg.steps
    if steps is None:
        steps = max(1, int(cfg.epochs) * count // int(cfg.batch_size))
    net = transform_net(int(cfg.transform.width), int(cfg.transform.residual_blocks),
                        seed=int(cfg.seed))
    atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    result = train(
        net, objective, style, batches, optimizer, int(steps), output_dir,
        checkpoint_every=int(cfg.checkpoint_every), keep_checkpoints=int(cfg.keep_checkpoints),
        validation_images=validation, validation_every=int(cfg.validation.every or 0),
        log_every=int(cfg.log_every), resume=bool(cfg.resume), fingerprint=fingerprint(cfg),
        progress=bool(cfg.progress), callback=callback,
    )
    metrics = {"name": str(cfg.name), "style": str(cfg.style), "training_images": count,
               **result.metrics}
    atomic_write(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    print(result.model_path.resolve())
    return float(metrics["final"].get("loss", float("nan")))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-checkpoint INFO lines
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return train_from_config(cfg, output_dir)
    except NeuralStyleError as err:
        exit_with_message(err)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
