"""Command-line entry: ``python -m neuralstyle.train +experiment=fast_wave data.dir=/path/to/train2014``.

Trains a feed-forward transform network (Johnson et al. 2016) with the Hydra-free pieces of
:mod:`neuralstyle.fast`.  The run directory is ``runs/train/${name}`` (no timestamp): running the
same command again resumes from the last checkpoint in it.  It receives ``checkpoints/``,
``model.keras``, ``validation/``, ``log.jsonl``, ``metrics.json``, ``config.yaml`` and ``.hydra/``;
the path of ``model.keras`` is printed at the end.  ``main`` returns the final loss (for sweepers).

A training holds the lock ``train.lock`` of its run directory (:func:`neuralstyle.fast.run_lock`),
so a second training under the same ``name`` fails at once.  The run's record (``config.yaml`` and
``.hydra/``, which Hydra is told not to write itself: ``hydra.output_subdir: null``) is written
only once the resume checks have passed, so a refused resume leaves the record of the run as it
was.  The validation photos default to the first ``validation.holdout`` decodable photos of
``data.dir`` (sorted), which are then kept out of training: nothing needs downloading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .entry import run_entry  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import ConfigError, NeuralStyleError  # noqa: E402
from .images import atomic_write, load_image, resolve_image  # noqa: E402
from .recipe import build_objective, config_dir, instantiate_node  # noqa: E402

#: Config keys that define a training run: a checkpoint is resumed only if they are unchanged.
FINGERPRINT_KEYS = (
    "style", "style_size", "size", "batch_size", "seed", "data.dir", "transform", "backbone",
    "optimizer", "style_loss", "content_loss", "tv_loss", "content_layers",
    "content_layer_weights", "style_layers", "style_layer_weights", "content_weight",
    "style_weight", "tv_weight",
)


def fingerprint(cfg: DictConfig, held_out=()) -> dict:
    """The settings of ``cfg`` that a resumed run must share with its checkpoint, with the names
    of the photos held out of ``data.dir`` for validation (they are not trained on).  (The
    training files themselves are added by :func:`neuralstyle.fast.train`.)"""
    out = {"validation.held_out": [str(name) for name in held_out]}
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


def _validation(cfg: DictConfig, files: list[str]):
    """``(images, held-out paths, training files)``: the listed ``validation.images``, or, when
    that is null, the first ``validation.holdout`` decodable photos of ``files``, kept out of
    training."""
    from .fast.data import hold_out

    size = cfg.validation.size
    if cfg.validation.images is not None:
        images = [_image(f"validation.images[{i}]", name, cfg.image_dir, size)
                  for i, name in enumerate(cfg.validation.images)]
        return images, [], files
    count = int(cfg.validation.get("holdout", 3) or 0)
    held, images, rest = hold_out(files, count, None if size is None else int(size))
    return images, held, rest


def train_from_config(cfg: DictConfig, output_dir: Path, callback=None,
                      record: Optional[Callable[[], None]] = None) -> float:
    """Train the network described by ``cfg`` into ``output_dir``; return the final loss.

    The whole training holds the run directory's lock.  ``config.yaml`` (and whatever
    ``record()`` writes: the command line's ``.hydra/``) is written only after the resume checks
    have passed."""
    from .fast import run_lock

    output_dir = Path(output_dir)
    if OmegaConf.is_missing(cfg.data, "dir") or cfg.data.dir is None:
        raise ConfigError("data.dir is required: a folder of training photos, e.g. "
                          "data.dir=/path/to/coco/train2014")
    with run_lock(output_dir):
        return _train_locked(cfg, output_dir, callback, record)


def _train_locked(cfg: DictConfig, output_dir: Path, callback, record) -> float:
    from .fast import list_images, photo_batches, train, transform_net

    style_size = None if cfg.style_size is None else int(cfg.style_size)
    style = _image("style", cfg.style, cfg.image_dir, style_size)
    files = list_images(cfg.data.dir)
    validation, held_out, files = _validation(cfg, files)
    objective = build_objective(cfg)
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    batches, count = photo_batches(cfg.data.dir, int(cfg.size), int(cfg.batch_size),
                                   seed=int(cfg.seed), num_threads=int(cfg.data.threads),
                                   prefetch=int(cfg.data.prefetch), files=files)
    data_dir = Path(cfg.data.dir).expanduser()
    held_names = [Path(p).relative_to(data_dir).as_posix() for p in held_out]
    steps = cfg.steps
    if steps is None:
        steps = max(1, int(cfg.epochs) * count // int(cfg.batch_size))
    net = transform_net(int(cfg.transform.width), int(cfg.transform.residual_blocks),
                        seed=int(cfg.seed))

    def write_record():  # after the checks: a refused run leaves the accepted run's record
        atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        if record is not None:
            record()

    result = train(
        net, objective, style, batches, optimizer, int(steps), output_dir,
        checkpoint_every=int(cfg.checkpoint_every), keep_checkpoints=int(cfg.keep_checkpoints),
        validation_images=validation, validation_every=int(cfg.validation.every or 0),
        log_every=int(cfg.log_every), resume=bool(cfg.resume),
        fingerprint=fingerprint(cfg, held_names), progress=bool(cfg.progress), callback=callback,
        lock=False, on_start=write_record,
    )
    metrics = {"name": str(cfg.name), "style": str(cfg.style), "training_images": count,
               "validation_images": held_names or [str(v) for v in cfg.validation.images or []],
               **result.metrics}
    atomic_write(output_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    print(result.model_path.resolve())
    return float(metrics["final"].get("loss", float("nan")))


def _hydra_record(cfg: DictConfig, output_dir: Path) -> Callable[[], None]:
    """Write what Hydra writes into ``<run>/.hydra/`` (the composed config, Hydra's own config and
    the command-line overrides), but only when called: after the resume checks."""
    hydra_cfg = HydraConfig.instance().cfg

    def write():
        folder = output_dir / ".hydra"
        atomic_write(folder / "config.yaml", OmegaConf.to_yaml(cfg).encode())
        atomic_write(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg).encode())
        atomic_write(folder / "overrides.yaml",
                     OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task).encode())

    return write


@hydra.main(version_base="1.3", config_path=str(config_dir("train")), config_name="config")
def main(cfg: DictConfig) -> float:
    return run_entry(lambda cfg, output_dir: train_from_config(
        cfg, output_dir, record=_hydra_record(cfg, output_dir)), cfg)


if __name__ == "__main__":
    main()
