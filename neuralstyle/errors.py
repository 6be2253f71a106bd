"""Errors raised by neuralstyle.

Every error a user can cause (a missing image, an unknown layer, weights that fail their
checksum, a loss that diverges) is a subclass of :class:`NeuralStyleError`, so that the
command-line entry can print one clear line instead of a traceback from inside JAX.
"""

import sys
from typing import NoReturn


class NeuralStyleError(Exception):
    """Base class of every error caused by input or configuration."""


class ImageError(NeuralStyleError):
    """An image could not be found, read or decoded."""


class LayerError(NeuralStyleError, KeyError):
    """A layer name is not part of the backbone."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(NeuralStyleError):
    """Backbone weights could not be found, downloaded or verified."""


class ConfigError(NeuralStyleError):
    """A configuration value is invalid."""


class NonFiniteLossError(NeuralStyleError):
    """The objective became NaN or infinite during optimization.

    Attributes:
      step: the 1-based step at which the loss was first non-finite.
      last_good_image: the last image (H, W, 3 float32 in [0, 1]) whose loss was finite.
      last_good_step: the step that produced ``last_good_image`` (0 = the initial image).
    """

    def __init__(self, step: int, last_good_image, last_good_step: int, terms=None):
        self.step = step
        self.last_good_image = last_good_image
        self.last_good_step = last_good_step
        self.terms = terms or {}
        detail = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        kept = (f"last finite image is from step {last_good_step}" if last_good_step >= 0
                 else "the initial image already has a non-finite loss")
        super().__init__(
            f"loss became non-finite at step {step}" + (f" ({detail})" if detail else "")
            + f"; optimization stopped, {kept}"
        )


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during optimization, carrying the image the loop had reached.

    A ``KeyboardInterrupt`` (so code that stops on Ctrl-C still does), raised by the loops with
    the current image so that the command-line entry can save it before exiting with status 130.

    Attributes:
      step: the number of completed steps.
      image: the current image (H, W, 3 float32 in [0, 1]), or ``None`` before the first step.
    """

    def __init__(self, step: int, image=None, message: str = ""):
        self.step = step
        self.image = image
        super().__init__(message)


def exit_with_message(err: NeuralStyleError, status: int = 2) -> NoReturn:
    """Print ``err`` (and its cause, if any) as one ``neuralstyle: error:`` line; exit with ``status``.

    The command-line entries (``run``, ``run_batched``, ``train``, ``apply``) call this for every
    :class:`NeuralStyleError`, so a user sees one line instead of a traceback.
    """
    message = f"neuralstyle: error: {err}"
    if err.__cause__ is not None:
        message += f"; {err.__cause__}"
    print(message, file=sys.stderr)
    sys.exit(status)
