"""L-BFGS against Adam and against PyTorch's L-BFGS, at equal iterations (VGG19, 256 px).

    python -m benchmarks.lbfgs [--size 256] [--iterations 30] [--out benchmarks/results]

Rows: neuralstyle's ``lbfgs()`` (optax two-loop recursion, Python-driven Armijo search over one
compiled value-and-gradient), ``optax.adam(0.02, b1=0.99, eps=0.1)``, plain ``optax.lbfgs()``
(zoom line search inside ``lax.while_loop``, driven as optax documents, jitted), and, when torch is
installed, ``torch.optim.LBFGS(history_size=100, line_search_fn="strong_wolfe")`` on the same
objective (benchmarks/torch_reference.py).  Each reports the final loss, seconds per iteration
(compile excluded) and objective evaluations.  Writes ``lbfgs.json`` and ``lbfgs.md``.
"""

from __future__ import annotations

import time

from benchmarks import harness


def main(argv=None):
    p = harness.parser("benchmarks.lbfgs", __doc__.splitlines()[0], "lbfgs")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--no-optax-lbfgs", action="store_true", help="skip the slow plain optax.lbfgs row")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax

    from neuralstyle import VGG, StyleObjective, lbfgs, load_content_and_style, stylize

    weights = None if args.weights in ("null", "none") else args.weights
    objective = StyleObjective.build(VGG("vgg19", weights=weights))
    content, style = load_content_and_style("astronaut", "great_wave", args.size, image_dir=args.image_dir)
    n = args.iterations
    rows = []
    for name, opt in (("neuralstyle lbfgs()", lbfgs()), ("optax.adam(0.02, b1=0.99, eps=0.1)",
                                                          optax.adam(0.02, b1=0.99, eps=0.1))):
        m = stylize(objective, content, style, opt, steps=n, progress=False).metrics
        rows.append({"optimizer": name, "iterations": m["steps"], "final_loss": m["final"]["total"],
                     "s_per_iteration": m["time_per_step_s"], "evaluations": m["function_evaluations"],
                     "compile_s": m["compile_time_s"]})
        print(rows[-1], flush=True)

    params = objective.params
    targets = jax.jit(objective.targets)(params, jnp.asarray(content)[None], [jnp.asarray(style)[None]])
    if not args.no_optax_lbfgs:
        tx = optax.lbfgs()
        value = lambda x: objective(params, x, targets)[0]  # noqa: E731
        vg = optax.value_and_grad_from_state(value)

        @jax.jit
        def step(x, state):
            loss, grad = vg(x, state=state)
            updates, state = tx.update(grad, state, x, value=loss, grad=grad, value_fn=value)
            return jnp.clip(optax.apply_updates(x, updates), 0.0, 1.0), state, loss

        x = jnp.asarray(content)[None]
        state = tx.init(x)
        t0 = time.perf_counter()
        x, state, _ = step(x, state)
        jax.block_until_ready(x)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n - 1):
            x, state, loss = step(x, state)
        jax.block_until_ready(x)
        per = (time.perf_counter() - t0) / max(n - 1, 1)
        rows.append({"optimizer": "plain optax.lbfgs() (jit)", "iterations": n,
                     "final_loss": float(value(x)), "s_per_iteration": per, "evaluations": None,
                     "compile_s": first - per, "compiles": step._cache_size()})
        print(rows[-1], flush=True)

    try:
        import torch

        from benchmarks.torch_reference import TorchObjective, set_threads, to_nchw
    except ImportError:
        print("torch is not installed (pip install torch==2.13.0): skipping torch.optim.LBFGS")
    else:
        set_threads()
        ref = TorchObjective.from_jax_objective(objective)
        ref.set_targets(to_nchw(content), to_nchw(style))
        x = to_nchw(content).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100, line_search_fn="strong_wolfe")
        evaluations = 0

        def closure():
            nonlocal evaluations
            evaluations += 1
            opt.zero_grad()
            loss = ref(x)
            loss.backward()
            return loss

        t0 = time.perf_counter()
        for _ in range(n):
            opt.step(closure)
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
        per = (time.perf_counter() - t0) / n
        with torch.no_grad():
            final = float(ref(x))
        rows.append({"optimizer": "torch.optim.LBFGS(strong_wolfe, history 100)", "iterations": n,
                     "final_loss": final, "s_per_iteration": per, "evaluations": evaluations,
                     "compile_s": None})
        print(rows[-1], flush=True)

    adam = next(r["final_loss"] for r in rows if r["optimizer"].startswith("optax.adam"))
    report = harness.report("benchmarks.lbfgs", argv, size=list(content.shape[:2]), rows=rows)
    lines = harness.markdown_header(
        f"L-BFGS vs Adam, {n} iterations, VGG19 at {content.shape[1]}x{content.shape[0]} px", report)
    lines += ["TF-tutorial objective, astronaut / great_wave, content initialization", "",
             "| optimizer | final loss | loss / Adam's | s per iteration | objective evaluations | compile s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        evaluations = "–" if r["evaluations"] is None else r["evaluations"]
        compile_s = "–" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        lines.append(f"| {r['optimizer']} | {r['final_loss']:.4g} | {r['final_loss'] / adam:.2f} | "
                     f"{r['s_per_iteration']:.3f} | {evaluations} | {compile_s} |")
    harness.write_report(args.out, args.name, report, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
