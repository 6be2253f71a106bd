"""The PyTorch side, run in a worker process when torch is installed: the reference of
:mod:`benchmarks.torch_reference` (same weights, preprocessing and losses) checked against the JAX
objective at the content image, then its Adam step and ``torch.optim.LBFGS`` iterations timed.

``spec["torch_device"]`` (default ``"cpu"``) places the network, images and optimizer state:
``"cuda"`` runs the reference on the GPU (PyTorch's defaults, so cuDNN convolutions in TF32);
each timed step then waits for the GPU, and the peak of ``torch.cuda.max_memory_allocated`` is
reported per phase.  The JAX objective this worker builds for the check runs on the CPU, so that
JAX takes no GPU memory in this process."""

from __future__ import annotations

import os

from benchmarks.harness import PeakMemory, log
from benchmarks.speed.common import build_objective, load_images, time_steps
from benchmarks.speed.flops import best_matmul_gflops


class GPUPeak:
    """``torch.cuda``'s peak allocated memory during a phase (MiB), or nothing on the CPU."""

    def __init__(self, device):
        self.device, self.mib = device, None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.mib = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return False


def waiting(step, device):
    """``step`` made to wait for the device's queued work before it returns."""
    import torch

    if device.type != "cuda":
        return step

    def synchronized():
        result = step()
        torch.cuda.synchronize(device)
        return result

    return synchronized


def check(objective, tobj, content, style, device="cpu") -> dict:
    """Both objectives at the content image (after setting ``tobj``'s targets)."""
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks import torch_reference as tr

    params = objective.params
    targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None], jnp.asarray(style)[None])
    jax_value, jax_terms = jax.jit(objective)(params, jnp.asarray(content)[None], targets)
    c = tr.to_nchw(content).to(device)
    tobj.set_targets(c, tr.to_nchw(style).to(device))
    with torch.no_grad():
        tterms = {k: float(v) for k, v in tobj.terms(c).items()}
    tval = sum(tterms.values())
    return {"jax_objective": float(jax_value), "torch_objective": tval,
            "relative_difference": abs(tval - float(jax_value)) / abs(float(jax_value)),
            "jax_terms": {k: float(v) for k, v in jax_terms.items()}, "torch_terms": tterms}


def time_adam(tobj, c, warmup: int, steps: int) -> dict:
    from benchmarks import torch_reference as tr

    with PeakMemory() as mem, GPUPeak(c.device) as gpu:
        _, step = tr.make_adam_step(tobj, c)
        result = time_steps(waiting(lambda: float(step()), c.device), warmup, steps)
    return {**result, "memory": mem.result(), "gpu_peak_mib": gpu.mib}


def time_lbfgs(tobj, c, warmup: int, steps: int) -> dict:
    from benchmarks import torch_reference as tr

    with PeakMemory() as mem, GPUPeak(c.device) as gpu:
        lb = tr.LBFGSRun(tobj, c)

        def step():
            before = lb.evaluations
            lb.step()
            return lb.evaluations - before

        result = time_steps(waiting(step, c.device), warmup, steps)
    evaluations = result.pop("losses")[warmup:]  # what step() returned: evaluations per iteration
    del result["warmup_ms"]
    return {**result, "evaluations": evaluations,
            "evaluations_per_iteration": round(sum(evaluations) / steps, 2),
            "final_loss": lb.losses[-1], "memory": mem.result(), "gpu_peak_mib": gpu.mib,
            "optimizer": tr.LBFGS_DESC}


def worker(spec: dict) -> dict:
    """Check, Adam and (when ``spec["lbfgs_steps"]``) L-BFGS at every size of ``spec["sizes"]``;
    then the time to target (``spec["ttt"]``) and the ``torch.matmul`` yardstick."""
    import torch

    from benchmarks import torch_reference as tr
    from benchmarks.speed import ttt

    device = torch.device(spec.get("torch_device") or "cpu")
    if device.type != "cpu":
        import jax

        jax.config.update("jax_platforms", "cpu")  # the check's JAX objective: no GPU memory here
    result = {"torch": torch.__version__, "threads": tr.set_threads(os.cpu_count()), "sizes": {},
              "mkldnn": bool(torch.backends.mkldnn.is_available()), "device": str(device)}
    if device.type == "cuda":
        result.update(gpu=torch.cuda.get_device_name(device),
                      cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                      matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    objective, weights_source, warnings = build_objective(spec)
    result.update(weights=weights_source, warnings=warnings)
    tobj = tr.TorchObjective.from_jax_objective(objective)
    tobj.features.to(device)
    for size in spec["sizes"]:
        content, style, desc = load_images(spec, size)
        out = result["sizes"][str(size)] = {"images": desc,
                                            "check": check(objective, tobj, content, style, device)}
        ch = out["check"]
        log(f"  [torch {size}px] objective at the content image: JAX {ch['jax_objective']:.7g}, "
            f"torch {ch['torch_objective']:.7g} (relative difference {ch['relative_difference']:.2e})")
        c = tr.to_nchw(content).to(device)
        a = out["adam"] = time_adam(tobj, c, spec["warmup"], spec["steps"])
        log(f"  [torch {size}px] Adam: median {a['median_ms']:.0f} ms/step, peak RSS "
            f"{a['memory']['peak_rss_mib']} MiB, foreign CPU load {a['foreign_cpu_load']}")
        if spec.get("lbfgs_steps", 0) > 0:
            lb = out["lbfgs"] = time_lbfgs(tobj, c, spec.get("lbfgs_warmup", 1), spec["lbfgs_steps"])
            log(f"  [torch {size}px] L-BFGS: median {lb['median_ms']:.0f} ms/iteration, "
                f"{lb['evaluations_per_iteration']} evaluations/iteration")
    if spec.get("ttt"):
        result["ttt"] = ttt.torch_run(dict(spec, **spec["ttt"]), (objective, weights_source, warnings))
    if spec.get("matmul_sizes"):
        mm = result["torch_matmul_gflops"] = {}
        for n in spec["matmul_sizes"]:
            a = torch.rand(n, n, generator=torch.Generator().manual_seed(n))
            mm[str(n)] = best_matmul_gflops(lambda: a @ a, n, spec["matmul_repeats"])
    return result
