"""Command-line entry: ``python -m neuralstyle.train +experiment=fast_wave data.dir=/path/to/train2014``,
or ``python -m neuralstyle.train +experiment=arbitrary_quarter data.dir=photos/ style_data.dir=paintings/``.

Trains a feed-forward network with the Hydra-free pieces of :mod:`neuralstyle.fast`: ``model:
fast`` is a transform network for one style (Johnson et al. 2016), ``model: arbitrary`` the
arbitrary-style pair of Ghiasi et al. 2017 (style predictor + conditional transformer), trained on
a folder of photos and a folder of style images (:mod:`neuralstyle.fast.arbitrary_training`); both
go through the same loop, checkpoints and resume.  The run directory is ``runs/train/${name}`` (no
timestamp): running the same command again resumes from the last checkpoint in it.  It receives
``checkpoints/``, ``model.keras`` (``model/`` for ``model=arbitrary``: the predictor and the
transformer), ``validation/``, ``log.jsonl``, ``metrics.json``, ``config.yaml`` and ``.hydra/``;
the path of the exported model is printed at the end.  ``main`` returns the final loss (for sweepers).

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
    "style_weight", "tv_weight", "model",
)
#: The same for ``model=arbitrary``, which has no ``style`` but a style folder and its settings.
ARBITRARY_FINGERPRINT_KEYS = tuple(k for k in FINGERPRINT_KEYS if k != "style") + (
    "style_data.dir", "arbitrary")
#: The values of the ``model`` key.
MODEL_KINDS = ("fast", "arbitrary")


def fingerprint(cfg: DictConfig, held_out=(), held_out_styles=None) -> dict:
    """The settings of ``cfg`` that a resumed run must share with its checkpoint, with the names
    of the photos held out of ``data.dir`` (and of the style images held out of ``style_data.dir``)
    for validation (they are not trained on).  (The training files themselves are added by
    :func:`neuralstyle.fast.train`.)"""
    out = {"validation.held_out": [str(name) for name in held_out]}
    if held_out_styles is not None:
        out["validation.held_out_styles"] = [str(name) for name in held_out_styles]
    keys = ARBITRARY_FINGERPRINT_KEYS if model_kind(cfg) == "arbitrary" else FINGERPRINT_KEYS
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if key in ("data.dir", "style_data.dir") and value is not None:
            value = str(Path(value).expanduser().resolve())
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _image(role: str, name, image_dir, long_edge):
    try:
        return load_image(resolve_image(name, image_dir), long_edge)
    except NeuralStyleError as err:
        raise type(err)(f"{role}: {err}") from None


def _validation(cfg: DictConfig, files: list[str], which: str = "images", size=None,
                data_key: str = "data.dir"):
    """``(images, held-out paths, training files)``: the listed ``validation.<which>``
    (``images``: photos, ``styles``: style images), or, when that is null, the first
    ``validation.holdout`` decodable files of ``files``, kept out of training.  ``size``: their
    long edge (default ``validation.size``)."""
    from .fast.data import hold_out

    size = cfg.validation.size if size is None else size
    listed = cfg.validation.get(which)
    if listed is not None:
        images = [_image(f"validation.{which}[{i}]", name, cfg.image_dir, size)
                  for i, name in enumerate(listed)]
        return images, [], files
    count = int(cfg.validation.get("holdout", 3) or 0)
    held, images, rest = hold_out(files, count, None if size is None else int(size), data_key)
    return images, held, rest


def model_kind(cfg: DictConfig) -> str:
    """``cfg.model`` (``fast`` when the key is absent), checked."""
    kind = str(cfg.get("model", "fast") or "fast")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"model must be one of {MODEL_KINDS}, got {kind!r}")
    return kind


def check_arbitrary_config(cfg: DictConfig) -> list[str]:
    """The style images of a ``model=arbitrary`` run (sorted paths under ``style_data.dir``), after
    the checks that need no network: the folder is given, exists and holds images, and the
    ``arbitrary`` settings can be built (:func:`neuralstyle.fast.arbitrary_training.check_arbitrary`)."""
    from .fast import list_images
    from .fast.arbitrary_training import check_arbitrary

    style_dir = OmegaConf.select(cfg, "style_data.dir")
    if style_dir is None or OmegaConf.is_missing(cfg.style_data, "dir"):
        raise ConfigError("style_data.dir is required for model=arbitrary: a folder of style images "
                          "(paintings, textures), e.g. style_data.dir=/path/to/paintings")
    check_arbitrary(int(cfg.transform.width), int(cfg.transform.residual_blocks), str(cfg.arbitrary.init))
    return list_images(style_dir, "style_data.dir")


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
    # checked before the run directory is touched (the lock creates it)
    style_files = check_arbitrary_config(cfg) if model_kind(cfg) == "arbitrary" else None
    with run_lock(output_dir):
        return _train_locked(cfg, output_dir, callback, record, style_files)


def _relative_names(paths, folder) -> list[str]:
    folder = Path(folder).expanduser()
    return [Path(p).relative_to(folder).as_posix() for p in paths]


def _arbitrary_parts(cfg: DictConfig, photos, style_files: list[str]):
    """``(network, batches of photo and style pairs, held-out style names)`` of a
    ``model=arbitrary`` run: the style images come from a second Grain pipeline over
    ``style_data.dir`` (random ``style_size`` crops), with its own validation hold-out."""
    from .fast import photo_batches
    from .fast.arbitrary_training import arbitrary_network
    from .fast.data import ContentStyleBatches

    style_size = int(cfg.style_size)
    styles, held_styles, style_files = _validation(cfg, style_files, "styles", style_size,
                                                   "style_data.dir")
    style_batches, _ = photo_batches(cfg.style_data.dir, style_size, int(cfg.batch_size),
                                     seed=int(cfg.seed) + 1, num_threads=int(cfg.style_data.threads),
                                     prefetch=int(cfg.style_data.prefetch), files=style_files,
                                     key="style_data.dir")
    network = arbitrary_network(int(cfg.transform.width), int(cfg.transform.residual_blocks),
                                init=str(cfg.arbitrary.init), train_trunk=cfg.arbitrary.train_trunk,
                                seed=int(cfg.seed), validation_styles=styles, style_size=style_size)
    return (network, ContentStyleBatches(photos, style_batches),
            _relative_names(held_styles, cfg.style_data.dir))


def _train_locked(cfg: DictConfig, output_dir: Path, callback, record, style_files=None) -> float:
    from .fast import list_images, photo_batches, train, transform_net

    kind = model_kind(cfg)
    files = list_images(cfg.data.dir)
    validation, held_out, files = _validation(cfg, files)
    objective = build_objective(cfg)
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    batches, count = photo_batches(cfg.data.dir, int(cfg.size), int(cfg.batch_size),
                                   seed=int(cfg.seed), num_threads=int(cfg.data.threads),
                                   prefetch=int(cfg.data.prefetch), files=files)
    held_names = _relative_names(held_out, cfg.data.dir)
    steps = cfg.steps
    if steps is None:
        steps = max(1, int(cfg.epochs) * count // int(cfg.batch_size))
    held_styles, style = None, None
    if kind == "arbitrary":
        net, batches, held_styles = _arbitrary_parts(cfg, batches, style_files)
    else:
        style_size = None if cfg.style_size is None else int(cfg.style_size)
        style = _image("style", cfg.style, cfg.image_dir, style_size)
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
        fingerprint=fingerprint(cfg, held_names, held_styles), progress=bool(cfg.progress),
        callback=callback,
        lock=False, on_start=write_record,
    )
    metrics = {"name": str(cfg.name), "model": kind,
               "style": str(cfg.style_data.dir) if kind == "arbitrary" else str(cfg.style),
               "training_images": count,
               "validation_images": held_names or [str(v) for v in cfg.validation.images or []],
               **result.metrics}
    if kind == "arbitrary":
        metrics["style_images"] = len(batches.style_files)
        metrics["validation_styles"] = held_styles or [str(v) for v in cfg.validation.styles or []]
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
