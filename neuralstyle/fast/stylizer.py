"""Stylizing photos with a trained transform network: one forward pass per image, any size.

``Stylizer(model)(image)`` runs the network (compiled once per size bucket, see
:mod:`neuralstyle.fast.buckets`; ``bucket=None``: once per image shape) on an ``(H, W, 3)``
image in [0, 1] and returns an image of the same size.  ``preserve_colors="luminance"`` keeps the
stylized image's luminance and the photo's chrominance (YIQ), the luminance-only transfer of
Gatys et al. 2017 (sec. 5.1) applied after the fact: the network itself was trained on colour
images, so this is a post-processing step, not a luminance-trained network.

Where results go (:func:`plan_outputs`; every rename and skip is printed on stderr):

* a single input file goes to ``output`` when that names an image file (``result.jpg``), otherwise
  to ``<output or default folder>/<stem>_stylized.png``; a folder's images go to
  ``<folder>/<stem>.png`` (``.tiff`` instead of ``.png`` with ``ext=".tiff"``);
* inputs whose stems are equal (compared case-insensitively: ``cat.jpg`` and ``cat.png``) would
  share a result, so each of them keeps its whole name instead: ``cat.jpg.png``, ``cat.png.png``
  (deterministic; a name still taken gets ``_2``, ``_3``... in sorted input order);
* an input is never written over: an input whose result would be an input file (``output=`` the
  input folder, or the input itself) is skipped; a single input is refused with an error;
* a generated name never replaces a file that this module did not write: results are PNG or TIFF
  files marked ``Software: neuralstyle.apply`` (a PNG text chunk, TIFF tag 305), a rerun replaces
  its own marked results, and any other existing file (a photo, a result of another program) makes
  its input be skipped.  A file named explicitly (``output=result.jpg`` for a single input) is
  written as asked, unless it is the input itself.

A folder (:func:`stylize_files`) is written in input order with the programs for its photos'
sizes compiled ahead in a background thread while earlier photos are stylized (a later photo whose
program is ready goes first while the next one's compiles), and photos decoded and written in
another thread (:mod:`neuralstyle.fast.ahead`); ``overlap=False`` does one thing after the other,
with the same results.

For print, results can be 16-bit PNG or TIFF (``bit_depth=16``), and each result carries the ICC
profile of its input photo (none, i.e. sRGB by assumption, when the photo has none); see
:func:`neuralstyle.images.io.save_image`.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional, Union  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ..images import combine_luminance  # noqa: E402
from ..errors import ConfigError, ImageError  # noqa: E402
from ..images import load_image, resize_long_edge, save_image  # noqa: E402
from ..images.io import read_icc_profile  # noqa: E402
from .ahead import CompileAhead, Programs  # noqa: E402
from .buckets import DEFAULT_BUCKET, BucketPlanning, BucketSpec, Bucketed, check_bucket  # noqa: E402
from .data import IMAGE_SUFFIXES  # noqa: E402
from .transform import CUSTOM_OBJECTS, apply_fn, get_params, prepared_kernels  # noqa: E402
from .xla import DEFAULT_CONV_BACKEND, apply_jit, check_conv_backend  # noqa: E402

APPLY_COLORS = (None, "luminance")

#: Smallest image side the network accepts (the 9x9 convolution's reflection padding).
MIN_SIDE = 8

#: The PNG text chunk ``Software`` of every generated result: what a rerun may replace.
RESULT_MARK = "neuralstyle.apply"


def load_transform(path: Union[str, Path]) -> keras.Model:
    """Load a transform network saved by training (a ``.keras`` file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model: {path} does not exist (expected the model.keras written by "
                          "python -m neuralstyle.train)")
    try:
        return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as err:  # noqa: BLE001 - any failure means "not a model file we can use"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model: could not load {path} as a Keras model ({first})") from None


class Stylizer(BucketPlanning):
    """A trained transform network as a function of images; see the module docstring.

    ``bucket`` (default :data:`~neuralstyle.fast.buckets.DEFAULT_BUCKET` px): images run in size
    buckets, one compiled program per bucket shape instead of one per image size, with the same
    result (:mod:`neuralstyle.fast.buckets`); a step in pixels, an increasing list of sides, or
    ``None`` for one program per image size.  Given the sizes about to come (:meth:`plan_sizes`,
    which :func:`stylize_files` calls with a folder's), a size alone in its bucket runs at its own
    size instead.

    ``conv_backend`` (default ``"eigen"``): the CPU convolution kernels of the compiled program,
    XLA's Eigen convolutions (several times faster here) or ``"xla"``, XLA's default; same result
    to about 1e-6 (:mod:`neuralstyle.fast.xla`)."""

    def __init__(self, model: Union[keras.Model, str, Path], bucket: BucketSpec = DEFAULT_BUCKET,
                 conv_backend: str = DEFAULT_CONV_BACKEND):
        sides = check_bucket(bucket)
        check_conv_backend(conv_backend)
        self.model = model if isinstance(model, keras.Model) else load_transform(model)
        self.params = get_params(self.model)
        # computed now, here, rather than by the first (perhaps background) compile
        self._kernels, self._kernels_of = prepared_kernels(self.model, self.params.trainable), self.params
        self._apply = Programs(apply_jit(apply_fn(self.model, gather_pads=True), conv_backend))
        self.bucketed = Bucketed(self.model, sides, conv_backend) if sides else None

    @property
    def kernels(self) -> dict:
        """The rewritten kernels of :attr:`params` (:func:`~neuralstyle.fast.transform.prepared_kernels`):
        the weights are frozen, so they are computed once (again if ``params`` is replaced), not
        in every compiled program."""
        if self._kernels_of is not self.params:
            self._kernels, self._kernels_of = prepared_kernels(self.model, self.params.trainable), self.params
        return self._kernels

    def precompile(self, shape) -> None:
        """Compile ahead the program that an ``(H, W, ...)`` image of ``shape`` will run in (its
        size bucket's, or its size's), so that its first call does not compile; thread-safe
        (:mod:`neuralstyle.fast.ahead`; :func:`stylize_files` calls it in a background thread).
        Shapes that ``__call__`` refuses are ignored here (the call says why)."""
        height, width = int(shape[0]), int(shape[1])
        if min(height, width) < MIN_SIDE:
            return
        if self.in_bucket(height, width):
            self.bucketed.precompile(self.params.trainable, self.params.non_trainable, height, width,
                                     kernels=self.kernels)
        else:
            self._apply.compile(self.params, jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32),
                                self.kernels)

    def __call__(self, image: np.ndarray, preserve_colors: Optional[str] = None) -> np.ndarray:
        if preserve_colors not in APPLY_COLORS:
            raise ConfigError(f"preserve_colors must be one of {APPLY_COLORS}, got {preserve_colors!r}")
        image = np.asarray(image, np.float32)
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < MIN_SIDE:
            raise ImageError(f"expected an (H, W, 3) image with sides of at least {MIN_SIDE} px, "
                             f"got shape {image.shape}")
        if self.in_bucket(*image.shape[:2]):
            out = self.bucketed(self.params.trainable, self.params.non_trainable, image[None],
                                kernels=self.kernels)[0]
        else:
            # NumPy in and out: indexing or converting jax arrays would compile small programs
            # per image size on the caller's path (the network's program is compiled ahead)
            out = np.asarray(self._apply(self.params, image[None], self.kernels))[0]
        if preserve_colors == "luminance":
            out = combine_luminance(out, image)
        return out


def input_files(path: Union[str, Path]) -> list[Path]:
    """``[path]`` for a file, the sorted image files directly inside a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageError(f"input: folder {path} holds no image files")
        return files
    raise ImageError(f"input: {path} does not exist")


@dataclass(frozen=True)
class Planned:
    """One input's fate: its ``target`` (``None``: skipped), whether the target's name was chosen
    here (``generated``) or given by the user, and ``note``, the reason for a rename or a skip."""

    source: Path
    target: Optional[Path]
    generated: bool = True
    note: Optional[str] = None


def is_our_result(path: Path) -> bool:
    """Whether ``path`` is a result written by :func:`save_result` (a PNG or TIFF carrying the
    mark)."""
    try:
        with Image.open(path) as im:
            if im.format == "PNG":
                return im.info.get("Software") == RESULT_MARK
            return im.format == "TIFF" and im.tag_v2.get(305) == RESULT_MARK
    except Exception:  # noqa: BLE001 - unreadable or not an image: not ours
        return False


def save_result(image: np.ndarray, path: Path, bit_depth: int = 8,
                icc_profile: Optional[bytes] = None) -> Path:
    """Write a generated result (PNG or TIFF after the suffix) marked ``Software:
    neuralstyle.apply``, atomically."""
    return save_image(image, path, bit_depth=bit_depth, icc_profile=icc_profile,
                      software=RESULT_MARK)


def _file_id(path: Path) -> Optional[tuple[int, int]]:
    """``(device, inode)`` of an existing file (the same file under any name), else ``None``."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _generated_names(inputs: list[Path], suffix: str, ext: str = ".png") -> list[str]:
    """``<stem><suffix><ext>`` per input; ``<name><suffix><ext>`` for stems shared
    (case-insensitively); ``_2``, ``_3``... for a name still taken (in input order)."""
    stems: dict[str, int] = {}
    for p in inputs:
        stems[p.stem.casefold()] = stems.get(p.stem.casefold(), 0) + 1
    names, taken = [], set()
    for p in inputs:
        base = p.name if stems[p.stem.casefold()] > 1 else p.stem
        name, k = f"{base}{suffix}{ext}", 1
        while name.casefold() in taken:
            k += 1
            name = f"{base}{suffix}_{k}{ext}"
        taken.add(name.casefold())
        names.append(name)
    return names


def plan_outputs(inputs: list[Path], input_arg: Union[str, Path], output: Union[str, Path, None],
                 default_dir: Path, ext: str = ".png") -> list[Planned]:
    """Where each input's result goes, with the reason for every rename and skip (see the module
    docstring); generated names end in ``ext`` (``.png`` or ``.tiff``); raises :class:`~neuralstyle.errors.ConfigError` when a single input would be
    written over itself."""
    single = Path(input_arg).expanduser().is_file()
    if single and output is not None and Path(output).suffix:
        target = Path(output).expanduser()
        if _file_id(target) is not None and _file_id(target) == _file_id(inputs[0]):
            raise ConfigError(f"output={output} is the input file itself; choose another output "
                              "(the input is never written over)")
        return [Planned(inputs[0], target, generated=False)]
    folder = Path(output).expanduser() if output is not None else Path(default_dir)
    suffix = "_stylized" if single else ""
    names = _generated_names(inputs, suffix, ext)
    input_ids = {_file_id(p) for p in inputs} - {None}
    plans = []
    for source, name in zip(inputs, names):
        target = folder / name
        note = None
        plain = f"{source.stem}{suffix}{ext}"
        if name != plain:
            note = f"{source.name} -> {target} ({plain} would be shared with another input)"
        if _file_id(target) in input_ids:
            if single:
                raise ConfigError(f"the result of {source} would be written over the input "
                                  f"itself ({target}); choose another output=")
            note = f"skipped {source.name}: its result {target} would be written over an input"
            target = None
        elif target.exists() and not is_our_result(target):
            note = (f"skipped {source.name}: {target} exists and was not written by "
                    "neuralstyle.apply (move it, or choose another output=)")
            target = None
        plans.append(Planned(source, target, True, note))
    return plans


def output_paths(inputs: list[Path], input_arg: Union[str, Path], output: Union[str, Path, None],
                 default_dir: Path, ext: str = ".png") -> list[Optional[Path]]:
    """Each input's result path (``None``: skipped); see :func:`plan_outputs`."""
    return [plan.target for plan in plan_outputs(inputs, input_arg, output, default_dir, ext)]


def _say(message: str) -> None:
    print(f"apply: {message}", file=sys.stderr)


def planned_shape(path: Path, size: Optional[int] = None) -> Optional[tuple[int, int]]:
    """``(height, width)`` of the image :func:`stylize_files` will stylize for ``path``, read from
    the file's header (its EXIF orientation applied, as :func:`~neuralstyle.images.load_image`
    does) and resized by the ``size`` rule (:func:`~neuralstyle.images.resize_long_edge`);
    ``None`` when the header cannot be read (the file's turn will raise the error)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # transposed or rotated by 90 degrees
                width, height = height, width
    except Exception:  # noqa: BLE001 - unreadable: load_image names it when its turn comes
        return None
    if size:
        scale = int(size) / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    return height, width


def _load(plan: Planned, size: Optional[int]) -> tuple[np.ndarray, Optional[bytes]]:
    """The image to stylize for ``plan`` and the ICC profile its result carries."""
    image = load_image(plan.source)
    if size:
        image = resize_long_edge(image, int(size))
    return image, read_icc_profile(plan.source)


def _save(plan: Planned, result: np.ndarray, bit_depth: int, icc_profile: Optional[bytes]) -> Path:
    save = save_result if plan.generated else save_image
    return save(result, plan.target, bit_depth=bit_depth, icc_profile=icc_profile)


def stylize_files(stylizer: Stylizer, input_path, output=None, default_dir: Path = Path("."),
                  size: Optional[int] = None, preserve_colors: Optional[str] = None,
                  progress: bool = False, say: Callable[[str], None] = _say, bit_depth: int = 8,
                  ext: str = ".png", overlap: bool = True) -> list[Path]:
    """Stylize a file or every image in a folder; returns the written paths.  Results are placed
    by :func:`plan_outputs` (never over an input, never two inputs on one result; generated names
    end in ``ext``, ``.png`` or ``.tiff``), written with ``bit_depth`` bits per channel and the
    ICC profile of their input (:func:`~neuralstyle.images.io.read_icc_profile`); each rename
    and skip is passed to ``say`` (default: a line on stderr).  An unreadable image raises
    :class:`~neuralstyle.errors.ImageError` naming it (results already written stay; each file is
    written atomically, so none is ever half-written).

    ``stylizer`` is a :class:`Stylizer`, or any ``(image, preserve_colors) -> image`` callable;
    one with a ``precompile(shape)`` method (:class:`Stylizer`, the arbitrary-style stylizer of
    ``neuralstyle.apply``) gets its programs compiled ahead.

    The images' sizes are read from the files' headers first (:func:`planned_shape`) and given to
    a stylizer's ``plan_sizes`` (:meth:`Stylizer.plan_sizes`: a size alone in its size bucket runs
    at its own size).  ``overlap=True`` (default): the programs for the distinct sizes (or size
    buckets) compile in a background thread in order of first use (:mod:`neuralstyle.fast.ahead`)
    while earlier images are stylized; images are decoded and results encoded and written in a
    second thread meanwhile.  While the program of the next image to write still compiles, a later
    image (of a window of :data:`LOOKAHEAD_IMAGES` images and :data:`LOOKAHEAD_PIXELS` pixels)
    whose program is ready is stylized first, and its result waits for its turn.  Results are
    written in the same order as without it (input order), with the same values (the same
    programs), the same files written before an error, and the same errors (a load or compile
    error is raised when its image is the next to write; a compile error with a note saying it
    came from the background thread); both threads are gone when this returns or raises.  ``overlap=False``: one image after the other in this thread,
    each program compiled on first use.  Measured on 20 photos of 5 sizes:
    ``benchmarks/results/fast_folder.md``."""
    inputs = input_files(input_path)
    plans = plan_outputs(inputs, input_path, output, default_dir, ext)
    for plan in plans:
        if plan.note:
            say(plan.note)
    plans = [plan for plan in plans if plan.target is not None]
    if not plans:
        raise ConfigError(f"nothing to write: every result would replace an input or a file not "
                          f"written by neuralstyle.apply; choose another output= (was {output})")
    bar = None
    if progress and len(plans) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), desc="apply", unit="image")
    precompile = getattr(stylizer, "precompile", None)
    plan_sizes = getattr(stylizer, "plan_sizes", None)
    needed = plan_sizes or (precompile and overlap)
    shapes = [planned_shape(plan.source, size) for plan in plans] if needed else [None] * len(plans)
    if plan_sizes:
        plan_sizes(shapes)
    try:
        if not overlap:
            written = []
            for plan in plans:
                image, icc_profile = _load(plan, size)
                written.append(_save(plan, stylizer(image, preserve_colors), bit_depth, icc_profile))
                if bar is not None:
                    bar.update()
            return written
        with CompileAhead(precompile, shapes) as ahead, \
                ThreadPoolExecutor(1, thread_name_prefix="neuralstyle-io") as io:
            return _overlapped(stylizer, plans, shapes, ahead, io, size, preserve_colors, bit_depth, bar)
    finally:
        if bar is not None:
            bar.close()


#: How far :func:`stylize_files` (overlapped) may stylize ahead of the next result to write, while
#: that result's program still compiles: at most this many images...
LOOKAHEAD_IMAGES = 16
#: ...of at most this many pixels in all (their decoded inputs and results wait in memory, about
#: 24 bytes a pixel: 200 MB; a larger image still goes alone).
LOOKAHEAD_PIXELS = 8_000_000


def _pixels(shape) -> int:
    return LOOKAHEAD_PIXELS if shape is None else int(shape[0]) * int(shape[1])


def _overlapped(stylizer, plans: list, shapes: list, ahead: CompileAhead, io: ThreadPoolExecutor,
                size, preserve_colors, bit_depth: int, bar) -> list[Path]:
    """:func:`stylize_files` with ``overlap=True``: inputs decoded in input order in the ``io``
    thread, a window ahead (:data:`LOOKAHEAD_IMAGES`, :data:`LOOKAHEAD_PIXELS`); the first
    image not written yet is stylized as soon as its program is ready, and while it compiles, a
    later image of the window whose program is ready is stylized instead (its result waits);
    results are written in input order by the ``io`` thread.  Load and compile errors surface
    when the image is the first unwritten one, as in turn, so the same files are written before
    them."""
    written, loads, results, skip = [], {}, {}, set()
    loaded = write = 0  # loads submitted for plans[:loaded]; results submitted for plans[:write]
    saving = None
    while write < len(plans):
        while loaded < len(plans) and (loaded == write or (
                loaded - write < LOOKAHEAD_IMAGES
                and sum(map(_pixels, shapes[write:loaded + 1])) <= LOOKAHEAD_PIXELS)):
            loads[loaded] = io.submit(_load, plans[loaded], size)
            loaded += 1
        pick = write
        if ahead.compiling(shapes[write]):
            pick = next((i for i in range(write + 1, loaded)
                         if i not in results and i not in skip and ahead.ready(shapes[i])), write)
        try:
            image, icc_profile = loads[pick].result()
        except Exception:
            if pick == write:
                raise  # its turn: the error is this image's, as in turn
            skip.add(pick)  # raised again at its turn
            continue
        del loads[pick]
        ahead.wait(image.shape[:2])
        results[pick] = stylizer(image, preserve_colors), icc_profile
        if bar is not None:
            bar.update()
        while write in results:
            result, icc_profile = results.pop(write)
            if saving is not None:
                written.append(saving.result())  # a failed write stops here, as in turn
            saving = io.submit(_save, plans[write], result, bit_depth, icc_profile)
            write += 1
    written.append(saving.result())
    return written
