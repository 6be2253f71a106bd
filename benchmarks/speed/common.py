"""What the JAX and PyTorch workers share: the image pair, the objective, the images, a timed loop."""

from __future__ import annotations

import time
from typing import Callable

from benchmarks.harness import Load, log, stats

CONTENT_IMAGE, STYLE_IMAGE = "astronaut", "great_wave"
TORCH_HINT = "pip install torch==2.13.0"


def build_objective(spec: dict):
    """``(objective, weights source, warnings)``: the recipe ``+experiment=vgg19_wave`` (the
    TF-tutorial objective on VGG19) composed from ``conf/``, with ``spec["weights"]`` (random
    weights, with a warning, when they cannot be loaded)."""
    from neuralstyle.recipe import build_objective as objective_from_config
    from neuralstyle.recipe import compose

    def build(weights):
        cfg = compose("run", ["+experiment=vgg19_wave", f"backbone.weights={weights}",
                              *spec.get("overrides", [])])
        objective = objective_from_config(cfg)
        return objective, objective.extractor.weights_source

    warnings = []
    weights = spec["weights"]
    try:
        objective, source = build("null" if weights == "random" else weights)
    except Exception as err:
        warnings.append(f"WARNING: VGG19 weights {weights!r} unavailable ({err}); using random weights")
        log(warnings[-1])
        objective, source = build("null")
    return objective, source, warnings


def load_images(spec: dict, size: int):
    """Content and style images (H, W, 3) in [0, 1] and a description of what they are."""
    import numpy as np

    if spec["images"] == "photo":
        try:
            import neuralstyle

            content, style = neuralstyle.load_content_and_style(
                CONTENT_IMAGE, STYLE_IMAGE, size=size, image_dir=spec["image_dir"])
            return content, style, (f"content {CONTENT_IMAGE} {content.shape[1]}x{content.shape[0]}, "
                                    f"style {STYLE_IMAGE} {style.shape[1]}x{style.shape[0]} (W x H)")
        except Exception as err:  # no network and no local copy
            log(f"WARNING: could not load the example images ({err}); using random images")
    rng = np.random.default_rng(size)
    content = rng.random((size, size, 3), dtype=np.float32)
    style = rng.random((size, size, 3), dtype=np.float32)
    return content, style, f"random square images {size}x{size} (seeded)"


def time_steps(step: Callable[[], object], warmup: int, steps: int) -> dict:
    """Call ``step()`` (which must wait for its result) ``warmup + steps`` times; the timed steps'
    statistics, the warm-up times, every result (``losses``) and the other processes' CPU share
    during the timed steps."""
    times, results = [], []

    def once():
        t = time.perf_counter()
        results.append(step())
        times.append(time.perf_counter() - t)

    for _ in range(warmup):
        once()
    with Load() as load:
        for _ in range(steps):
            once()
    return {"warmup": warmup, "warmup_ms": [round(1000 * v, 1) for v in times[:warmup]],
            **stats(times[warmup:]), "losses": results, "foreign_cpu_load": load.foreign}
