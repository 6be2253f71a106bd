"""Time to target: seconds (setup excluded and included) and updates until the current iterate
reaches a fixed target, Adam and L-BFGS, JAX and PyTorch, from the same start.

Two targets, both fixed here per size (not chosen per run), for astronaut content, great_wave
style, content initialization, VGG19 ImageNet weights and the TF-tutorial objective:

* **a loss** (:data:`TTT_TARGETS`): the first iterate whose objective value is below it;
* **a quality** (:data:`QUALITY_TARGETS`, with ``--ttt-quality``): the first snapshot whose style
  distance (relative sliced Wasserstein distance to the style image, ``swd``) is at most the
  target while its content distance (LPIPS to the content photo) stays at most the bound — the
  quality benchmark's distances (:mod:`benchmarks.quality`, :mod:`neuralstyle.metrics`:
  torchvision VGG16, a network the optimization does not use; lower is closer for both).

With ``--ttt-quality`` every run records snapshots of its iterates (every ``SNAPSHOT_EVERY``
updates, the start included) with the run's clock, and runs all
its updates instead of stopping at the loss target.  Taking a snapshot costs nothing in JAX (the
iterate is an immutable device array: the run keeps a reference) and one tensor copy in PyTorch,
whose time is measured and taken off the run's clock.  After the runs (never in a timed loop) the
snapshots are written to a folder and graded by a separate worker (:func:`quality_run`), and
:func:`time_to_quality` finds the first one that meets the quality target.  Its time is that of
the snapshot, so it is an upper bound with the snapshot spacing as resolution.

Setup is what a run pays before its first update: computing the targets (the content features and
the style's Gram matrices; in JAX, compiling that program too) and, in JAX, compiling the step.

A size without its own target takes the nearest calibrated size's, with a warning in the report
(the 64 px smoke test uses those of 256 and 512 px).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.harness import Load, log
from benchmarks.speed.common import CONTENT_IMAGE, STYLE_IMAGE, build_objective, load_images

TTT_SIZE = 256

#: The target loss per size.  256 px: 5e7 is about where PyTorch's and neuralstyle's Adam (0.02,
#: b1=0.99, eps=0.1) are after 30-35 steps (earlier runs: 7.0e7 after 14 steps, 5.3e7 after 30).
#: 512 px: 2.7e7 is where PyTorch Adam is after 28 steps in a pilot run (2026-12-02, 80 steps of
#: each optimizer in both frameworks; the loss at the content image is 1.91e8, 5e7 is passed
#: after 7 steps there): 2.70e7 after 28 Adam steps in both frameworks, 2.57e7 after 9
#: neuralstyle L-BFGS iterations, 2.55e7 after 10 torch.optim.LBFGS iterations.
TTT_TARGETS = {256: 5.0e7, 512: 2.7e7}

#: Give up after this many updates (Adam steps, L-BFGS iterations), per size.  With
#: ``--ttt-quality`` every run takes all of them, so at 512 px they are the pilot's step counts
#: at the targets plus a margin.
TTT_MAX_STEPS = {256: (150, 60), 512: (36, 13)}

#: The quality target per size: ``swd`` at most ``swd`` while ``lpips`` is at most ``lpips``.
#: 512 px, from a pilot of neuralstyle Adam (36 steps) and L-BFGS (12 iterations) with a graded
#: snapshot every 3 steps / every iteration (2026-12-02; Adam's trajectory is PyTorch Adam's to 3-4
#: digits of the loss): the content photo has SWD 0.419.  Adam's SWD is lowest after about 6 steps
#: (0.294, LPIPS 0.468) and then rises again while LPIPS grows (0.353 / 0.574 after 36 steps: its
#: later loss decrease buys the VGG19 objective, not this independent style distance); L-BFGS's
#: falls steadily (0.294 / 0.353 after 5 iterations, 0.275 / 0.399 after 12).  SWD <= 0.30 with
#: LPIPS <= 0.50 is a 28% style-distance reduction that both optimizers reach; a stricter SWD
#: (0.29) is one Adam never reaches, and LPIPS <= 0.45 excludes Adam's best iterate.
QUALITY_TARGETS = {512: {"swd": 0.30, "lpips": 0.50}}

#: Snapshot every this many Adam steps / L-BFGS iterations (``--ttt-quality``); grading one costs
#: about 5 s at 512 px on 2 cores (the SWD's sorts), so Adam is sampled more sparsely.
SNAPSHOT_EVERY = (3, 1)

OPTIMIZERS = ("adam", "lbfgs")


def calibrated(table: dict, size: int):
    """``(value, size it was calibrated at)``: ``table``'s entry for ``size`` or the nearest size's."""
    at = min(table, key=lambda s: (abs(s - size), s))
    return table[at], at


def spec_from_args(args, with_dir: bool = True) -> dict:
    """What the workers need: size, loss target, update limits and (``--ttt-quality``) the
    snapshot spacing and (``with_dir``) folder.  Unset options take the values fixed for the size."""
    target = args.ttt_target if args.ttt_target is not None else calibrated(TTT_TARGETS, args.ttt_size)[0]
    max_steps = args.ttt_max_steps or calibrated(TTT_MAX_STEPS, args.ttt_size)[0]
    spec = {"size": args.ttt_size, "target": target,
            "max_steps": dict(zip(OPTIMIZERS, max_steps)), "quality": None}
    if args.ttt_quality:
        spec["quality"] = {"every": dict(zip(OPTIMIZERS, args.ttt_snapshot_every))}
        if with_dir:
            spec["quality"]["dir"] = args.ttt_snapshot_dir
    return spec


class Snapshots:
    """A run's snapshots: iterates (whatever ``take`` was given: a device array, a tensor copy),
    the updates applied to each and the run's clock when its loss was known.  ``excluded``: the
    seconds spent taking them, which the run takes off its clock."""

    def __init__(self, every: int):
        self.every, self.excluded = every, 0.0
        self.steps, self.seconds, self.images = [], [], []

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def take(self, step: int, image_fn) -> None:
        """Store ``image_fn()`` as the iterate after ``step`` updates, timing the call."""
        t = time.perf_counter()
        image = image_fn()
        self.excluded += time.perf_counter() - t
        self.steps.append(step)
        self.images.append(image)

    def save(self, folder, name: str, to_numpy) -> dict:
        """Write the images to ``folder/name.npz`` (after the run) and return the record that
        :func:`quality_run` and :func:`time_to_quality` read."""
        import numpy as np

        arrays = [np.asarray(to_numpy(i), np.float32) for i in self.images]
        images = np.stack([a.reshape(a.shape[-3:]) for a in arrays])  # (K, H, W, 3)
        path = Path(folder) / f"{name}.npz"
        np.savez(path, images=images)
        return {"every": self.every, "file": str(path), "steps": self.steps,
                "seconds": [round(s, 3) for s in self.seconds], "copy_s": round(self.excluded, 4)}


def first_below(losses, seconds, target):
    """``(updates, seconds)`` of the first iterate whose loss is below ``target``, or ``None``."""
    return next(((i, s) for i, (v, s) in enumerate(zip(losses, seconds)) if v < target), None)


def setup_seconds(compile_s, setup_s) -> float:
    """What a run pays before its first update: computing the targets (``setup_s``: the style
    and content features; in JAX their program's compile too) and compiling the step."""
    return (compile_s or 0.0) + (setup_s or 0.0)


def record(target, losses, reached, compile_s, load, evaluations=None, setup_s=None) -> dict:
    """``reached``: ``(updates, seconds)`` of the first iterate whose loss is below ``target``;
    ``load``: the :class:`~benchmarks.harness.Load` of the run; ``setup_s``: the targets' time."""
    steps, seconds = reached if reached else (None, None)
    return {"target": target, "reached": reached is not None, "steps": steps,
            "seconds": None if seconds is None else round(seconds, 3),
            "compile_s": None if compile_s is None else round(compile_s, 3),
            "setup_s": None if setup_s is None else round(setup_s, 3),
            "seconds_with_setup": None if seconds is None else round(seconds + setup_seconds(compile_s, setup_s), 3),
            "iterates_evaluated": len(losses), "evaluations": evaluations,
            "final_loss": losses[-1] if losses else None, "losses": losses,
            "foreign_cpu_load": load.foreign}


def snapshot_spec(spec: dict, opt: str):
    """``Snapshots`` for optimizer ``opt`` of a run, or ``None`` without ``--ttt-quality``."""
    q = spec.get("quality")
    return Snapshots(q["every"][opt]) if q else None


def jax_run(spec: dict, built=None) -> dict:
    """In a JAX worker: Adam and neuralstyle's L-BFGS from the content image until the loss of
    the current iterate is below ``spec["target"]`` (at most ``spec["max_steps"]`` updates; all
    of them with snapshots).  ``built``: the :func:`~benchmarks.speed.common.build_objective`
    result of the worker."""
    import jax
    import jax.numpy as jnp

    from benchmarks.speed.jax_worker import compile_adam, prepare, run_lbfgs
    from neuralstyle.optim.driver import Monitor

    objective, weights_source, warnings = built or build_objective(spec)
    objective = jax.tree.map(jnp.asarray, objective)
    params, target, size = objective.params, spec["target"], spec["size"]
    targets, image, desc, setup_s = prepare(objective, params, spec, size)
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    compiled, state, compile_s = compile_adam(objective, params, targets, image)
    x, losses, reached, snaps = image, [], None, snapshot_spec(spec, "adam")
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["adam"] + 1):
            new_x, state, loss, _ = compiled(objective, x, state, params, targets)  # loss of x (i updates)
            losses.append(float(loss))
            now = time.perf_counter() - t0
            if snaps is not None and snaps.due(i):
                snaps.take(i, lambda: x)  # a reference: x is never changed or donated
                snaps.seconds.append(now)
            if reached is None and losses[-1] < target:
                reached = (i, now)
                if snaps is None:
                    break
            x = new_x
    result["adam"] = record(target, losses, reached, compile_s, load, evaluations=len(losses), setup_s=setup_s)
    if snaps is not None:
        result["adam"]["snapshots"] = snaps.save(spec["quality"]["dir"], "jax_adam", lambda a: a)
    log(f"  [jax ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del compiled

    snaps = snapshot_spec(spec, "lbfgs")

    class SnapshotMonitor(Monitor):
        """The driver's monitor, also keeping a reference to every due iterate (no copy)."""

        def advanced(self, step, images):
            super().advanced(step, images)
            if snaps.due(step):
                snaps.take(step, lambda: images)

    if snaps is None:
        monitor = Monitor(spec["max_steps"]["lbfgs"], show=False, stop_below=target)
    else:
        monitor = SnapshotMonitor(spec["max_steps"]["lbfgs"], show=False)
        snaps.take(0, lambda: image)  # the start, which the driver does not pass to `advanced`
    with Load() as load:
        loop = run_lbfgs(objective, params, targets, image, spec["max_steps"]["lbfgs"], monitor=monitor)
    losses = [h[0] for h in loop.histories[0]]
    times = loop.times[0]  # the driver's clock starts after compiling, as t0 did above
    result["lbfgs"] = record(target, losses, first_below(losses, times, target), loop.compile_time,
                             load, int(loop.evaluations[0]), setup_s=setup_s)
    if snaps is not None:
        snaps.seconds = [times[s] for s in snaps.steps]
        result["lbfgs"]["snapshots"] = snaps.save(spec["quality"]["dir"], "jax_lbfgs", lambda a: a)
    log(f"  [jax ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, {result['lbfgs']['seconds']} s")
    return result


def torch_run(spec: dict, built=None) -> dict:
    """In a PyTorch worker: Adam and ``torch.optim.LBFGS`` (see
    :class:`benchmarks.torch_reference.LBFGSRun`), same objective, start, target and snapshots
    as JAX.  A snapshot is a copy of the image tensor; its time is taken off the run's clock."""
    from benchmarks import torch_reference as tr

    tr.set_threads(os.cpu_count())
    objective, weights_source, warnings = built or build_objective(spec)  # torch copies its weights
    target, size = spec["target"], spec["size"]
    content, style, desc = load_images(spec, size)
    tobj = tr.TorchObjective.from_jax_objective(objective)
    c = tr.to_nchw(content)
    t = time.perf_counter()
    tobj.set_targets(c, tr.to_nchw(style))
    setup_s = time.perf_counter() - t
    result = {"weights": weights_source, "warnings": warnings, "images": desc}

    def to_numpy(t):
        return t.permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC

    x, step = tr.make_adam_step(tobj, c)
    losses, reached, snaps = [], None, snapshot_spec(spec, "adam")
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["adam"] + 1):
            due = snaps is not None and snaps.due(i)
            if due:
                snaps.take(i, lambda: x.detach().clone())  # before step() changes x
            losses.append(float(step()))  # loss of the image after i updates
            now = time.perf_counter() - t0 - (snaps.excluded if snaps else 0.0)
            if due:
                snaps.seconds.append(now)
            if reached is None and losses[-1] < target:
                reached = (i, now)
                if snaps is None:
                    break
    result["adam"] = record(target, losses, reached, None, load, evaluations=len(losses), setup_s=setup_s)
    if snaps is not None:
        result["adam"]["snapshots"] = snaps.save(spec["quality"]["dir"], "torch_adam", to_numpy)
    log(f"  [torch ttt {size}px] Adam: {result['adam']['steps']} steps, {result['adam']['seconds']} s")
    del step

    lb = tr.LBFGSRun(tobj, c)
    snaps, excluded = snapshot_spec(spec, "lbfgs"), []
    with Load() as load:
        t0 = time.perf_counter()
        for i in range(spec["max_steps"]["lbfgs"] + 1):
            if snaps is not None and snaps.due(i):
                snaps.take(i, lambda: lb.x.detach().clone())
            excluded.append(snaps.excluded if snaps else 0.0)
            lb.step()  # starts by evaluating the current iterate (after i updates)
            if snaps is None and lb.iterate_losses[-1] < target:
                break
    seconds = [t - t0 - e for t, e in zip(lb.iterate_times, excluded)]
    result["lbfgs"] = dict(record(target, lb.iterate_losses, first_below(lb.iterate_losses, seconds, target),
                                  None, load, lb.evaluations, setup_s=setup_s), optimizer=tr.LBFGS_DESC)
    if snaps is not None:
        snaps.seconds = [seconds[s] for s in snaps.steps]
        result["lbfgs"]["snapshots"] = snaps.save(spec["quality"]["dir"], "torch_lbfgs", to_numpy)
    log(f"  [torch ttt {size}px] L-BFGS: {result['lbfgs']['steps']} iterations, {result['lbfgs']['seconds']} s")
    return result


def quality_run(spec: dict) -> dict:
    """In its own worker, after the timed runs: the quality benchmark's distances (LPIPS to the
    content, SWD and Gram distance to the style; :meth:`neuralstyle.metrics.PerceptualMetrics.distances`)
    of every snapshot file in ``spec["files"]`` (``{run name: path}``).  Random metric weights
    when the runs used random weights (the smoke test)."""
    import numpy as np

    from neuralstyle.metrics import metrics_network

    t = time.perf_counter()
    metrics = metrics_network("random" if spec["weights"] == "random" else "torchvision")
    content, style, _ = load_images(spec, spec["size"])
    content_features, style_statistics = metrics.features(content), metrics.style_statistics(style)
    out = {"metric_weights": metrics.weights_source, "runs": {}}
    for name, path in spec["files"].items():
        rows = [metrics.distances(image, content_features, style_statistics)
                for image in np.load(path)["images"]]
        out["runs"][name] = {k: [round(r[k], 5) for r in rows] for k in ("lpips", "swd", "gram")}
        log(f"  [quality {spec['size']}px] {name}: {len(rows)} snapshots graded")
    out["at_content"] = metrics.distances(content, content_features, style_statistics)
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


def time_to_quality(run: dict, distances: dict, target: dict, setup_s: float) -> dict:
    """The first snapshot of ``run`` (its ``snapshots`` record) with ``swd <= target["swd"]`` and
    ``lpips <= target["lpips"]``: its updates and seconds (``setup_s``, the targets and the step's
    compile, excluded and included), and every snapshot's distances."""
    snaps = run["snapshots"]
    hit = next((k for k, (s, c) in enumerate(zip(distances["swd"], distances["lpips"]))
                if s <= target["swd"] and c <= target["lpips"]), None)
    seconds = None if hit is None else snaps["seconds"][hit]
    return {"target": target, "reached": hit is not None,
            "steps": None if hit is None else snaps["steps"][hit],
            "seconds": seconds,
            "seconds_with_setup": None if seconds is None else round(seconds + setup_s, 3),
            "snapshot_every": snaps["every"], "snapshot_copy_s": snaps["copy_s"],
            "snapshot_steps": snaps["steps"], "snapshot_seconds": snaps["seconds"], **distances}


def ratios(out: dict, key: str) -> dict:
    """neuralstyle's seconds over PyTorch's per optimizer, for records ``out[impl][opt][key]``
    (``key``: ``None`` for the loss records themselves)."""
    res = {}
    for opt in OPTIMIZERS:
        j, t = (((out.get(impl) or {}).get(opt) or {}) for impl in ("jax", "torch"))
        if key:
            j, t = j.get(key) or {}, t.get(key) or {}
        res[opt] = {k: (round(j[k] / t[k], 3) if j.get(k) and t.get(k) else None)
                    for k in ("seconds", "seconds_with_setup")}
    return res


def time_to_target(args, base_spec: dict, xla_flags: str, with_torch: bool, attached: dict) -> dict:
    """In the parent: the time-to-target section of the report.  ``attached``: the results the
    main workers already measured at the time-to-target size (``{"jax": ..., "torch": ...}``);
    what is missing runs in its own worker; then (``--ttt-quality``) the grading worker."""
    from benchmarks.speed.workers import run_worker

    tspec = spec_from_args(args)
    spec = dict(base_spec, matmul_sizes=[], **tspec)
    target_at = calibrated(TTT_TARGETS, args.ttt_size)[1]
    out = {"size": args.ttt_size, "target": tspec["target"], "pair": f"{CONTENT_IMAGE} + {STYLE_IMAGE}",
           "init": "content", "max_steps": tspec["max_steps"], "warnings": []}
    if args.ttt_target is None and target_at != args.ttt_size:
        out["warnings"].append(f"time to target: no loss target fixed for {args.ttt_size} px; "
                               f"used the {target_at} px one ({tspec['target']:g})")
    res = attached.get("jax")
    if res is None:
        log(f"time to target {tspec['target']:g} at {args.ttt_size} px: JAX ...")
        res = run_worker("ttt_jax", spec, xla_flags)
    if "error" in res:
        out["warnings"].append(f"time to target (JAX) failed: {res['error']}")
        log(out["warnings"][-1] + "\n" + res.get("output_tail", ""))
        return out
    out["images"], out["weights"] = res["images"], res["weights"]
    out["jax"] = {k: res[k] for k in OPTIMIZERS}
    if with_torch:
        res = attached.get("torch")
        if res is None:
            log("time to target: PyTorch ...")
            res = run_worker("ttt_torch", spec, None)
        if "error" in res:
            out["warnings"].append(f"time to target (PyTorch) failed: {res['error']}")
        else:
            out["torch"] = {k: res[k] for k in OPTIMIZERS}
            out["ratios"] = ratios(out, None)
    for impl in ("jax", "torch"):
        for opt in OPTIMIZERS:
            r = out.get(impl, {}).get(opt)
            if r is not None and not r["reached"]:
                out["warnings"].append(
                    f"time to target: {impl} {opt} did not reach {tspec['target']:g} within "
                    f"{tspec['max_steps'][opt]} updates (last loss {r['final_loss']:.4g})")
    if tspec["quality"]:
        grade(out, spec, args)
    return out


def grade(out: dict, spec: dict, args) -> None:
    """Grade every run's snapshots in a worker and add its time to quality (``quality`` in each
    run's record, ``quality_target`` and ``quality_ratios`` in ``out``)."""
    from benchmarks.speed.workers import run_once

    target, at = calibrated(QUALITY_TARGETS, args.ttt_size)
    out["quality_target"] = dict(target, calibrated_at=at)
    if at != args.ttt_size:
        out["warnings"].append(f"time to quality: no quality target fixed for {args.ttt_size} px; "
                               f"used the {at} px one")
    runs = {f"{impl}_{opt}": r for impl in ("jax", "torch") for opt, r in (out.get(impl) or {}).items()}
    log(f"time to quality: grading the snapshots of {len(runs)} runs ...")
    files = {n: r["snapshots"]["file"] for n, r in runs.items()}
    # untimed: no waiting for quiet, and the environment's XLA_FLAGS (the tests' cheap-compile flags)
    res = run_once("ttt_quality", dict(spec, files=files), os.environ.get("XLA_FLAGS"), timeout=3600)
    if "error" in res:
        out["warnings"].append(f"time to quality: grading failed: {res['error']}")
        log(out["warnings"][-1] + "\n" + res.get("output_tail", ""))
        return
    out["metric_weights"], out["quality_at_content"] = res["metric_weights"], res["at_content"]
    out["grading_s"] = res["seconds"]
    for name, r in runs.items():
        r["quality"] = time_to_quality(r, res["runs"][name], target, setup_seconds(r["compile_s"], r["setup_s"]))
        del r["snapshots"]  # its steps and seconds are in r["quality"]; the file is temporary
        if not r["quality"]["reached"]:
            out["warnings"].append(
                f"time to quality: {name.replace('_', ' ')} did not reach SWD <= {target['swd']:g} "
                f"with LPIPS <= {target['lpips']:g} within its {len(r['losses']) - 1} updates "
                f"(last SWD {r['quality']['swd'][-1]:.3f}, LPIPS {r['quality']['lpips'][-1]:.3f})")
    if "torch" in out:
        out["quality_ratios"] = ratios(out, "quality")
