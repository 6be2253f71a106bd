"""The recipe layer: one place that turns a config into the parts of a run.

Every command-line entry (``run``, ``run_batched``, ``train``) and the benchmarks call these
functions instead of decoding the config themselves:

* :func:`check_config` refuses bad values by key before any heavy work;
* :func:`instantiate_node` instantiates a config group (``_target_``) and reports our own errors
  without Hydra's wrapping;
* :func:`build_objective` builds the :class:`~neuralstyle.objective.StyleObjective`;
* :func:`build_run` loads the images (with the colour control, masks and memory check) and builds
  the objective, the optimizer and the initialization of an optimization run: a :class:`RunParts`.

Nothing here imports Hydra's application machinery: a config composed with ``hydra.compose`` (or
any ``DictConfig`` with the keys of ``conf/run/optimization.yaml``) is enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from .errors import ConfigError, ImageError, NeuralStyleError
from .images import INIT_KINDS, apply_color_control, image_size, initial_image, load_content_and_style, load_mask, resolve_image
from .objective import StyleObjective
from .optim import check_memory


#: The config tree of each command-line entry (``conf/<tree>/``) and its primary config file.
#: ``run_batched`` shares the run tree: its primary ``batched.yaml`` extends ``config.yaml``.
ENTRY_CONFIGS = {"run": ("run", "config"), "run_batched": ("run", "batched"),
                 "train": ("train", "config"), "apply": ("apply", "config")}


def config_root() -> Path:
    """The config trees: shipped inside the package in a wheel (``neuralstyle/conf``), ``conf/`` in
    a checkout.  One tree per entry (``run/``, ``train/``, ``apply/``) and the shared groups
    (``components/``, on the search path of each tree)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "run" / "config.yaml").is_file():
            return candidate
    raise RuntimeError(f"neuralstyle's config tree is missing (looked in {here / 'conf'})")


def config_dir(entry: str = "run") -> Path:
    """The config tree of ``entry`` (one of :data:`ENTRY_CONFIGS`): what its ``@hydra.main`` reads.

    Each entry has its own tree, so a training recipe (``conf/train/experiment/fast_*.yaml``)
    cannot be composed under ``neuralstyle.run`` and an optimization recipe not under ``train``.
    """
    if entry not in ENTRY_CONFIGS:
        raise ValueError(f"unknown entry {entry!r}; expected one of {sorted(ENTRY_CONFIGS)}")
    return config_root() / ENTRY_CONFIGS[entry][0]


def compose(entry: str = "run", overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config ``python -m neuralstyle.<entry> OVERRIDES...`` would run with, composed without
    starting a job (Hydra's compose API; no run directory, no logging set-up).  With
    ``return_hydra_config``, the ``hydra`` node (run directory, launcher) is included.

    For tests, benchmarks and research code that build a run from a recipe::

        cfg = compose("run", ["+experiment=vgg19_wave", "size=256"])
        parts = build_run(cfg)
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    directory = config_dir(entry)
    with initialize_config_dir(str(directory), version_base="1.3"):
        return hydra_compose(ENTRY_CONFIGS[entry][1], overrides=list(overrides),
                             return_hydra_config=return_hydra_config)


def instantiate_node(node: DictConfig, key: str):
    """``hydra.utils.instantiate`` of the group ``key``; our own errors come out unwrapped and
    prefixed with the key, anything else becomes a :class:`ConfigError` naming the key."""
    try:
        return instantiate(node)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{key}: a value is required ({str(err).splitlines()[0]}; "
                          f"set it as {err.full_key}=...)") from None
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, NeuralStyleError):
            raise type(cause)(f"{key}: {cause}") from None
        raise ConfigError(f"{key}: {err}") from None


def plain(value):
    """A config node as plain Python (lists, dicts); other values unchanged."""
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


# --------------------------------------------------------------------------- checks

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
    ("pyramid.start_size", "optional_positive_int", "null or a whole number of pixels >= 1"),
    ("pyramid.factor", "greater_than_one", "a finite number > 1 (2, or 1.41421356 for sqrt 2)"),
    ("average_decay", "optional_decay", "null (off) or a number in [0, 1), e.g. 0.99"),
    ("tile.size", "optional_positive_int", "null (off) or a whole number of pixels >= 1, e.g. 512"),
    ("tile.halo", "optional_non_negative_int", "null (exact, from the layers) or a whole number of pixels >= 0"),
)


def _valid(value, kind: str) -> bool:
    if kind.startswith("optional_"):
        if value is None:
            return True
        kind = kind[len("optional_"):]
    if isinstance(value, bool):
        return False
    if kind.endswith("int"):
        if not isinstance(value, int):
            return False
        return {"positive_int": value >= 1, "non_negative_int": value >= 0}.get(kind, True)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if kind == "greater_than_one":
        return value > 1
    if kind == "decay":
        return 0 <= value < 1
    return value > 0 if kind == "positive_float" else value >= 0


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the key for the first value of :data:`CHECKED_KEYS`
    that is not what it should be (``size=abc``, ``steps=-1``, ``style_scale=inf``, ...).
    Keys the config does not have are skipped."""
    for key, kind, accepted in CHECKED_KEYS:
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        value = OmegaConf.select(cfg, key)
        if not _valid(value, kind):
            raise ConfigError(f"{key} must be {accepted}, got {value!r}")


def planned_shape(path: Path, size: int) -> tuple[int, int]:
    """``(H, W)`` of ``path`` resized to long edge ``size``, from the file's header alone."""
    width, height = image_size(path)
    scale = size / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


# --------------------------------------------------------------------------- components

@dataclass(frozen=True)
class InitSpec:
    """The starting image of an optimization (config group ``init``, ``_target_`` this class).

    ``kind`` is one of :data:`~neuralstyle.stylize.INIT_KINDS`; ``mean`` and ``std`` describe the
    noise, ``path`` the file of ``kind="file"``.  :meth:`image` makes it for a content image.
    """

    kind: str = "content"
    mean: float = 0.5
    std: float = 0.25
    path: Optional[str] = None

    def __post_init__(self):
        if self.kind not in INIT_KINDS:
            raise ConfigError(f"unknown init kind {self.kind!r}; expected one of {INIT_KINDS}")

    def image(self, content: np.ndarray, style, seed: int) -> np.ndarray:
        return initial_image(self.kind, content, style, seed=seed, noise_mean=self.mean,
                             noise_std=self.std, path=self.path)


def build_objective(cfg: DictConfig) -> StyleObjective:
    """The objective described by ``cfg`` (backbone, layers, weights and loss components)."""
    backbone = instantiate_node(cfg.backbone, "backbone")
    return StyleObjective.build(
        backbone,
        content_layers=list(cfg.content_layers),
        style_layers=list(cfg.style_layers),
        content_layer_weights=plain(cfg.content_layer_weights),
        style_layer_weights=plain(cfg.style_layer_weights),
        content_weight=float(cfg.content_weight),
        style_weight=float(cfg.style_weight),
        tv_weight=float(cfg.tv_weight),
        content_loss=instantiate_node(cfg.content_loss, "content_loss"),
        style_loss=instantiate_node(cfg.style_loss, "style_loss"),
        tv_loss=instantiate_node(cfg.tv_loss, "tv_loss"),
    )


@dataclass
class RunParts:
    """Everything an optimization run needs, built once from a config by :func:`build_run`.

    ``content`` and ``style`` are the images the objective sees (after the colour control);
    ``finish`` maps an optimized image back to the output's colours (identity without a colour
    control); ``masks`` are the style masks at the content's size, or ``None``.  ``scales`` are the
    ``(H, W)`` of a coarse-to-fine run, smallest first (``None``: one scale), with ``scale_steps``
    (one number or one per scale), ``warm_start``; ``average_decay`` is the averaged iterate's;
    ``tile_size`` and ``tile_halo`` turn on exact tiled optimization for larger images.
    """

    content_path: Path
    content: np.ndarray
    style: Union[np.ndarray, list]
    finish: Callable[[np.ndarray], np.ndarray]
    masks: Optional[list]
    objective: StyleObjective
    optimizer: Any
    init: InitSpec
    style_blend: Optional[list]
    scales: Optional[list] = None
    scale_steps: Union[int, list, None] = None
    warm_start: bool = False
    average_decay: Optional[float] = None
    tile_size: Optional[int] = None
    tile_halo: Optional[int] = None

    def initial_image(self, seed: int) -> np.ndarray:
        return self.init.image(self.content, self.style, seed)


def build_run(cfg: DictConfig) -> RunParts:
    """Check ``cfg`` and build the parts of its run, cheapest checks first: values, the content
    file's header and the memory estimate come before any image is decoded or network built."""
    check_config(cfg)
    content_path = _resolve("content", cfg.content, cfg.image_dir)
    try:
        shape = planned_shape(content_path, int(cfg.size))
    except ImageError as err:
        raise ImageError(f"content: {err}") from None
    optimizer = instantiate_node(cfg.optimizer, "optimizer")
    init = instantiate_node(cfg.init, "init")
    tile_size = (cfg.get("tile") or {}).get("size")
    window = None
    if tile_size is not None and max(shape) > int(tile_size):  # stylize tiles only larger images
        from .backbones import canonical_layer_name
        from .tiling import planned_window

        arch = str(cfg.backbone.arch)
        layers = [canonical_layer_name(n, arch) for n in [*cfg.content_layers, *cfg.style_layers]]
        window = planned_window(shape, arch, layers, int(tile_size), (cfg.get("tile") or {}).get("halo"))
    check_memory(shape, optimizer, what=f"size={int(cfg.size)} ({content_path})", window=window)
    content, style = load_content_and_style(
        str(content_path), plain(cfg.style), size=int(cfg.size), style_scale=float(cfg.style_scale),
        image_dir=cfg.image_dir,
    )
    masks = None
    if cfg.style_masks is not None:
        masks = [load_mask(path, content.shape[:2]) for path in cfg.style_masks]
    content, style, finish = apply_color_control(content, style, cfg.preserve_colors)
    objective = build_objective(cfg)
    objective.extractor.check_input(content.shape, f"content image {content_path}")
    if tile_size is not None:  # refuse a bad tile or an objective that cannot be tiled now
        from .tiling import TiledObjective

        TiledObjective(objective, int(tile_size), (cfg.get("tile") or {}).get("halo"))
    names = plain(cfg.style)
    names, images = (names, style) if isinstance(names, list) else ([names], [style])
    for i, (name, image) in enumerate(zip(names, images)):
        role = "style" if len(names) == 1 else f"style[{i}]"
        objective.extractor.check_input(
            image.shape, f"{role} image {_resolve(role, name, cfg.image_dir)} at style_scale="
                         f"{float(cfg.style_scale):g}")
    scales, scale_steps, warm_start = _scales(cfg, content.shape[:2])
    average_decay = cfg.get("average_decay")
    tile = cfg.get("tile") or {}
    return RunParts(content_path, content, style, finish, masks, objective, optimizer, init,
                    plain(cfg.style_blend_weights), scales, scale_steps, warm_start,
                    None if average_decay is None else float(average_decay),
                    tile.get("size"), tile.get("halo"))


def _scales(cfg: DictConfig, shape: tuple[int, int]):
    """The ``pyramid`` section: ``(scales or None, steps per scale, warm_start)``."""
    from .stylize import multiscale_shapes, pyramid_shapes

    pyramid = cfg.get("pyramid") or {}
    start_size, levels = pyramid.get("start_size"), int(pyramid.get("levels", 1))
    if start_size is not None:
        scales = multiscale_shapes(shape, int(start_size), float(pyramid.get("factor", 2.0)))
    else:
        scales = pyramid_shapes(shape, levels)
    if len(scales) == 1:
        return None, None, False
    steps = plain(pyramid.get("steps"))
    if steps is None:
        steps = int(cfg.steps)
    elif isinstance(steps, list) and len(steps) != len(scales):
        raise ConfigError(f"pyramid.steps has {len(steps)} entries for {len(scales)} scales "
                          f"({', '.join(f'{w}x{h}' for h, w in scales)}); give one per scale, "
                          "smallest first, or one number")
    return scales, steps, bool(pyramid.get("warm_start", False))


def _resolve(role: str, name, image_dir) -> Path:
    try:
        return resolve_image(name, image_dir)
    except ImageError as err:
        raise ImageError(f"{role}: {err}") from None
