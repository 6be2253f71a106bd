"""Speed benchmark of one style-transfer step on the CPU: ``python -m benchmarks.speed``.

For VGG19 (ImageNet weights) and the TensorFlow-tutorial recipe (the
:meth:`neuralstyle.StyleObjective.build` defaults), at 256, 512 and 1024 px by default, it measures

1. the compiled Adam step (:func:`neuralstyle.optim.make_step` + ``jax.jit``) and L-BFGS
   iterations through the library's driver (:func:`neuralstyle.optim.driver.optimize`):
   :mod:`.jax_worker`;
2. the same Adam step and ``torch.optim.LBFGS`` in PyTorch eager (:mod:`benchmarks.torch_reference`),
   with its objective checked against the JAX one, when torch is installed: :mod:`.torch_worker`;
3. the seconds and updates until the loss falls below a fixed target and (``--ttt-quality``)
   until snapshots graded by the quality benchmark's distances meet a fixed quality target, both
   frameworks, both optimizers: :mod:`.ttt`;
4. the yardsticks (BLAS matmul GFLOP/s) and the FLOPs of a step: :mod:`.flops`;
5. how time and memory grow with the pixel count (least-squares fits): :mod:`.scaling`.

Every measurement runs in a fresh subprocess (:mod:`.workers`); :mod:`.run` plans them and
assembles the report, :mod:`.report` turns it into the rows and the Markdown, and
:mod:`benchmarks.harness` supplies the machine, the load, timing, peak memory and the writing.
"""

from benchmarks.speed.common import CONTENT_IMAGE, STYLE_IMAGE
from benchmarks.speed.run import main
from benchmarks.speed.scaling import scaling

__all__ = ["CONTENT_IMAGE", "STYLE_IMAGE", "main", "scaling"]
