"""Command-line batched sweeps: ``python -m neuralstyle.run_batched +experiment=NAME
batch.style_weight=[1e-3,1e-2,1e-1]`` (and/or ``batch.content_weight``, ``batch.tv_weight``,
``batch.seed``: lists of equal length N).

The config is :mod:`neuralstyle.run`'s plus the ``batch`` lists; the N settings are optimized
together by the Hydra-free :func:`neuralstyle.stylize_batched` (one compiled step).  Writes into
the Hydra run directory ``run_KK/result.png`` and ``run_KK/metrics.json`` per setting,
``batch.json`` (every setting with its final loss) and ``config.yaml``, and prints each result's
path.  Style masks and pyramids are not batched (use ``python -m neuralstyle.run -m``).
The ``output`` section (format, bit depth) and the content's ICC profile apply as in
:mod:`neuralstyle.run`: ``run_KK/result.tiff`` with ``output.format=tiff``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .entry import run_entry, with_cpu_schedule  # noqa: I001  (first: sets KERAS_BACKEND and the run_id resolver)

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from .stylize import stylize_batched  # noqa: E402
from .errors import ConfigError, Interrupted  # noqa: E402
from .images import atomic_write, save_image  # noqa: E402
from .images.io import read_icc_profile  # noqa: E402
from .objective import WEIGHT_FIELDS  # noqa: E402
from .recipe import build_run, check_config, config_dir, plain  # noqa: E402
from .run import output_record, result_options  # noqa: E402

BATCH_KEYS = WEIGHT_FIELDS + ("seed",)


def batch_settings(batch) -> tuple[Optional[list], Optional[list]]:
    """``(weights, seeds)`` for :func:`stylize_batched` from the config's ``batch`` node: lists of
    equal length N under ``content_weight``, ``style_weight``, ``tv_weight`` and ``seed``."""
    lists = {k: v for k, v in dict(batch or {}).items() if v is not None}
    unknown = sorted(set(lists) - set(BATCH_KEYS))
    if unknown:
        raise ConfigError(f"batch has unknown key(s) {unknown}; expected some of {list(BATCH_KEYS)}")
    if not lists:
        raise ConfigError("a batched sweep needs at least one list under batch, e.g. "
                          "batch.style_weight=[1e-3,1e-2,1e-1] or batch.seed=[0,1,2]")
    for k, v in lists.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError(f"batch.{k} must be a non-empty list, e.g. batch.{k}=[1,2,3]; got {v!r}")
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"the batch lists must have the same length (one entry per run); got {lengths}")
    n = next(iter(lengths.values()))
    weights = None
    if any(k in lists for k in WEIGHT_FIELDS):
        weights = [{k: lists[k][i] for k in WEIGHT_FIELDS if k in lists} for i in range(n)]
    return weights, lists.get("seed")


def run_batched_from_config(cfg, output_dir) -> list:
    """Run the batched sweep described by ``cfg`` (the config of ``neuralstyle.run`` plus the
    ``batch`` lists) into ``output_dir``: ``run_KK/result.png`` and ``run_KK/metrics.json`` per
    setting, ``config.yaml`` and ``batch.json`` (every setting with its final loss).  Returns the
    final losses."""
    output_dir = Path(output_dir)
    weights, seeds = batch_settings(plain(cfg.get("batch")))
    check_config(cfg)
    result_name, bit_depth = result_options(cfg)
    if cfg.style_masks is not None:
        raise ConfigError("batched sweeps do not support style_masks; run those settings one by "
                          "one with python -m neuralstyle.run -m")
    if int(cfg.pyramid.levels) > 1 or cfg.pyramid.get("start_size") is not None:
        raise ConfigError("batched sweeps run one scale (pyramid.levels 1, pyramid.start_size "
                          "null); run coarse-to-fine settings one by one with "
                          "python -m neuralstyle.run -m")
    if cfg.get("tile") and cfg.tile.get("size") is not None:
        raise ConfigError("batched sweeps do not tile (tile.size must be null); run tiled settings "
                          "one by one with python -m neuralstyle.run -m")
    parts = build_run(cfg)
    icc_profile = read_icc_profile(parts.content_path)
    run_seeds = seeds if seeds is not None else [int(cfg.seed)] * len(weights)
    atomic_write(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    finish = parts.finish
    try:
        result = stylize_batched(parts.objective, parts.content, parts.style, weights=weights,
                                 seeds=seeds, optimizer=parts.optimizer, steps=int(cfg.steps),
                                 init=[parts.initial_image(int(s)) for s in run_seeds],
                                 seed=int(cfg.seed), progress=bool(cfg.progress),
                                 style_blend=parts.style_blend, average_decay=parts.average_decay)
    except Interrupted as stop:  # Ctrl-C: keep every run's current image
        paths = [save_image(finish(image), output_dir / f"run_{k:02d}" / f"interrupted_step_{stop.step:05d}.png")
                 for k, image in enumerate(stop.image)]
        raise Interrupted(stop.step, stop.image, f"the {len(paths)} images after step {stop.step} are "
                          f"saved as {output_dir}/run_KK/{paths[0].name}") from None
    summary = []
    for k, run in enumerate(result.runs):
        run_dir = output_dir / f"run_{k:02d}"
        metrics = {"content": str(cfg.content), "style": plain(cfg.style), **run,
                   "batch": result.metrics,
                   "output": output_record(result_name, bit_depth, icc_profile)}
        path = save_image(finish(result.images[k]), run_dir / result_name,  # image first,
                          bit_depth=bit_depth, icc_profile=icc_profile)
        atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode())  # record last
        summary.append({"run": k, "weights": run["weights"], "seed": run["seed"],
                        "final_loss": run["final"]["total"] if run["final"] else None,
                        "result": str(path)})
        print(path.resolve())
    atomic_write(output_dir / "batch.json",
                 json.dumps({**result.metrics, "runs": summary}, indent=2).encode())
    return [s["final_loss"] for s in summary]


@hydra.main(version_base="1.3", config_path=str(config_dir("run_batched")), config_name="batched")
def main(cfg) -> list:
    return run_entry(with_cpu_schedule(run_batched_from_config), cfg)  # cpu_schedule: before JAX starts


if __name__ == "__main__":
    main()
