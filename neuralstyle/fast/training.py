r"""Training a feed-forward style network (Johnson, Alahi & Fei-Fei, ECCV 2016): loss, step, loop.

The pieces, each usable alone:

* :func:`perceptual_loss` -- the paper's loss network (eq. 5): the optimization objective of
  Gatys et al. (:class:`~neuralstyle.objective.StyleObjective`, unchanged) applied to a batch, the
  content target being each photo's own features and the style target the style image's Gram
  matrices, averaged over the batch;
* :class:`FastNetwork` -- what the loop trains, as a small interface (initial weights, the loss
  of a batch, validation images, export); :class:`FastNetwork` is Johnson et al.'s transform net
  with its one style, :class:`neuralstyle.fast.arbitrary_training.ArbitraryNetwork` the arbitrary-style
  pair of Ghiasi et al. 2017 (style predictor + conditional transformer), trained by the same loop;
* :func:`make_train_step` -- one ``jax.jit``-compiled pure function
  ``(state, loss-network params, style statistics, batch) -> (state, metrics)``; with several
  local devices it runs data-parallel (the batch is split over a ``jax.sharding.Mesh``, the
  rest replicated, XLA inserts the gradient all-reduce);
* :class:`Checkpointer` -- orbax-checkpoint: network, optimizer state, step and the data
  pipeline's position, written atomically every ``checkpoint_every`` steps;
* :func:`train` -- the loop: progress bar (images/s, losses, ETA), periodic validation images,
  checkpoints, resume, and the exported Keras model file;
* :func:`run_lock` -- one training per output directory at a time (an exclusive ``flock``).

Loss normalization (a choice, stated here because the recipe's weights depend on it).  The paper
defines, for a layer with features :math:`\phi` of shape :math:`C \times H \times W`,

.. math::

   \ell_{feat} = \frac{1}{CHW}\lVert\phi(\hat y) - \phi(y)\rVert_2^2, \qquad
   G = \frac{\phi\phi^\top}{CHW}, \qquad
   \ell_{style} = \lVert G(\hat y) - G(y_s)\rVert_F^2 .

The content term here is ``content_loss("mean")`` (exactly :math:`\ell_{feat}`), and the style term
``gram_loss("hw")``: Gram matrices divided by :math:`HW` and compared by the mean squared
difference over the :math:`C^2` entries, which equals :math:`\lVert G/(CHW) \text{ difference}
\rVert_F^2` -- exactly the paper's :math:`\ell_{style}`.  Per-layer style terms are summed
(``style_layer_weights: sum``) and every term is averaged over the batch.  With torchvision's
ImageNet VGG16 (inputs normalized by the ImageNet mean and std, as that network was trained) the
content term between a photo and a flat grey image at ``conv3_3`` is about 24 and the summed style
distance between a 256 px photo and the Great Wave / Starry Night about 15 / 23 (measured; see the
README), so content weight 1 with style weight 50-220 puts the style term one to two orders of
magnitude above the content term at the start of training, which is the regime the recipe's
weights come from.  PyTorch reimplementations instead average the squared Gram difference over its
entries (``mse_loss``), which is :math:`C^2` times smaller and would need a style weight of order
:math:`10^5`-:math:`10^{10}` with these features.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from ..backbones import BackboneParams
from ..errors import ConfigError, NeuralStyleError
from ..images import atomic_write, save_image
from ..objective import StyleObjective, Targets
from .data import Batches
from .transform import TransformParams, apply_fn, get_params, set_params
from .xla import DEFAULT_CONV_BACKEND, jit

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None

log = logging.getLogger(__name__)

#: The lock file a training holds in its output directory (see :func:`run_lock`).
LOCK_FILE = "train.lock"


class TrainingDivergedError(NeuralStyleError):
    """The training loss became NaN or infinite (the last checkpoint is left untouched)."""


# --------------------------------------------------------------------------- the loss network

def perceptual_loss(objective: StyleObjective, params: BackboneParams, stylized: jnp.ndarray,
                    photos: jnp.ndarray, style_statistics: dict):
    """Johnson et al.'s loss (eq. 5) of a batch: ``(total, terms)``, each averaged over the batch.

    ``stylized`` is the transform net's output for ``photos`` (both ``(B, H, W, 3)`` in [0, 1]);
    the content target is the features of ``photos`` (no gradient flows into it);
    ``style_statistics`` is :func:`style_statistics`'s result.
    """
    features = objective.extractor.apply(params, photos)
    targets = Targets(
        content={n: jax.lax.stop_gradient(features[n]) for n in objective.content_layers},
        style=(style_statistics,),
        blend=jnp.ones((1,), jnp.float32),
        key=jax.random.key(0),
    )
    terms = objective.terms(params, stylized, targets)
    batch = stylized.shape[0]
    terms = {k: v / batch for k, v in terms.items()}
    return terms["content"] + terms["style"] + terms["tv"], terms


def style_statistics(objective: StyleObjective, params: BackboneParams, style: jnp.ndarray) -> dict:
    """``{style layer: statistics}`` of a ``(1, H, W, 3)`` style image (Gram matrices for Gram).

    A ``(B, H, W, 3)`` batch of style images gives one statistics per image (a leading axis of
    ``B``), which :func:`perceptual_loss` compares element by element with a batch of ``B``
    stylized images: each image against its own style (the arbitrary-style loss)."""
    features = objective.extractor.apply(params, jnp.asarray(style, jnp.float32))
    return {n: objective.style_loss.target(features[n]) for n in objective.style_layers}


# --------------------------------------------------------------------------- the train step

class TrainState(NamedTuple):
    """Everything that changes during training (a pytree of arrays)."""

    step: jax.Array
    params: TransformParams
    opt_state: optax.OptState


def init_state(params: TransformParams, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params.trainable))


# --------------------------------------------------------------------------- what is trained

class FastNetwork:
    """Johnson et al.'s kind of network for the loop: one transform net, one style built in.

    The interface the loop uses (an arbitrary-style pair implements the same):

    * ``initial_params()`` -- a :class:`TransformParams` (its ``trainable`` part is optimized);
    * ``style_targets(objective, loss_params)`` -- statistics fixed for the whole run (here: the
      style image's Gram matrices; ``{}`` when every batch brings its own styles);
    * ``loss(objective, loss_params, statistics, params, batch)`` -- ``(total, terms)``, pure;
    * ``validation_images(params, images)`` -- ``(name, image)`` pairs saved as
      ``validation/step_NNNNNN_<name>.png``;
    * ``export(params, output_dir)`` -- writes the trained network, returns its path.
    """

    kind = "fast"

    def __init__(self, transform: keras.Model, style: Optional[np.ndarray] = None):
        self.transform = transform
        self.style = style
        self.apply = apply_fn(transform)
        self._apply = jit(self.apply)

    def initial_params(self) -> TransformParams:
        return get_params(self.transform)

    def style_targets(self, objective: StyleObjective, loss_params: BackboneParams) -> dict:
        if self.style is None:
            raise ConfigError("training a transform network needs its style image")
        return style_statistics(objective, loss_params, jnp.asarray(self.style, jnp.float32)[None])

    def loss(self, objective, loss_params, statistics, params: TransformParams, batch):
        """Johnson et al.'s loss (:func:`perceptual_loss`) of the stylized ``batch`` of photos."""
        return perceptual_loss(objective, loss_params, self.apply(params, batch), batch, statistics)

    def validation_images(self, params: TransformParams, images: Sequence[np.ndarray]):
        for k, image in enumerate(images):
            yield str(k), self._apply(params, jnp.asarray(image, jnp.float32)[None])[0]

    def export(self, params: TransformParams, output_dir: Path) -> Path:
        return export_model(self.transform, params, Path(output_dir) / "model.keras")


def as_network(transform, style: Optional[np.ndarray] = None):
    """A keras transform net (with its ``style``) as a :class:`FastNetwork`; a network object
    (:class:`FastNetwork`, :class:`~neuralstyle.fast.arbitrary_training.ArbitraryNetwork`) as it is."""
    return FastNetwork(transform, style) if isinstance(transform, keras.Model) else transform


def make_train_step(transform: keras.Model, tx: optax.GradientTransformation,
                    conv_backend: str = DEFAULT_CONV_BACKEND) -> Callable:
    """The pure step ``(objective, state, loss params, style statistics, batch) -> (state, metrics)``,
    jitted.

    ``transform`` is a transform net (Johnson et al.) or a network object (:class:`FastNetwork`,
    :class:`~neuralstyle.fast.arbitrary_training.ArbitraryNetwork`, whose batches are photo and style
    pairs).  Nothing is closed over but the network's structure and ``tx``: the loss objective (a pytree
    whose leaves are its weights, as in :func:`neuralstyle.optim.make_step`, so one compiled step
    serves every weight setting), the transform weights, optimizer state, frozen loss-network
    weights and style targets are arguments.  ``metrics`` holds the
    batch-mean ``loss`` and its ``content``, ``style`` and ``tv`` terms.  Under a data mesh (see
    :func:`data_mesh`) the same function runs data-parallel, because XLA propagates the input
    shardings: pass the batch split over the mesh and the rest replicated.  ``conv_backend``
    selects the CPU convolution kernels of the compiled step, the transform net's and the loss
    network's (:mod:`neuralstyle.fast.xla`; default ``"eigen"``, faster here).
    """
    network = as_network(transform)

    def step(objective: StyleObjective, state: TrainState, loss_params: BackboneParams,
             statistics: dict, batch):
        def loss_fn(trainable):
            params = TransformParams(trainable, state.params.non_trainable)
            return network.loss(objective, loss_params, statistics, params, batch)

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.params.trainable)
        trainable = optax.apply_updates(state.params.trainable, updates)
        new = TrainState(state.step + 1, TransformParams(trainable, state.params.non_trainable),
                         opt_state)
        return new, {"loss": loss, **terms}

    return jit(step, conv_backend)


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-D mesh ``("data",)`` over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), ("data",))


def replicate(tree, mesh: Mesh):
    """Put every array of ``tree`` on all devices of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch, mesh: Mesh):
    """Split a batch (an array, or a pytree of arrays with the same leading axis) over the
    ``"data"`` axis of ``mesh`` (its size must divide the batch)."""
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[0] % mesh.size:
            raise ConfigError(f"batch_size {leaf.shape[0]} is not a multiple of the {mesh.size} "
                              "local devices it is split over")
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))


# --------------------------------------------------------------------------- checkpoints

class Checkpointer:
    """orbax-checkpoint ``CheckpointManager`` over ``directory``: the train state as a flat dict
    of arrays, the data pipeline's position and metadata as JSON.  Each checkpoint is written to
    a temporary folder and renamed (orbax's atomic commit), so a run killed while saving leaves
    the previous checkpoint intact; the last ``keep`` are kept."""

    def __init__(self, directory: Path, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, state: TrainState, data_state: dict, meta: dict) -> None:
        ocp = self._ocp
        step = int(state.step)
        leaves = {f"{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(leaves), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def read_meta(self, step: Optional[int] = None) -> dict:
        """The metadata of checkpoint ``step`` (default: the latest) alone, without its arrays:
        enough to decide whether to resume it."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, template: TrainState, step: Optional[int] = None):
        """``(state, data_state, meta)`` of checkpoint ``step`` (default: the latest), with the
        structure, shapes and dtypes of ``template``."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        leaves, treedef = jax.tree.flatten(template)
        abstract = {f"{i:04d}": jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                    for i, x in enumerate(leaves)}
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        values = [jnp.asarray(restored.state[k]) for k in sorted(restored.state)]
        return jax.tree.unflatten(treedef, values), restored.data, restored.meta

    def close(self) -> None:
        self.manager.close()


# --------------------------------------------------------------------------- the run lock

@contextlib.contextmanager
def run_lock(directory):
    """Hold an exclusive lock on ``directory/train.lock`` while the block runs.

    The lock is ``fcntl.flock`` taken without waiting: when another process (or another open of
    the file) holds it, :class:`~neuralstyle.errors.ConfigError` is raised at once, naming the
    directory and the holder's process id.  The operating system releases the lock when its
    holder exits, also on a kill, so a crashed training never leaves a stale lock; the file itself
    stays (deleting it would let two processes lock two different files).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    if fcntl is None:  # pragma: no cover
        log.warning("no fcntl on this system: %s is not locked against a second training", directory)
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = path.read_text().strip() if path.is_file() else ""
        raise ConfigError(
            f"another training{f' (process {holder})' if holder.isdigit() else ''} is running in "
            f"{directory.resolve()} (it holds {LOCK_FILE}); wait for it to end, or train under "
            "another name (name=...)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for the message above and for people
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    """Final transform weights, the path of the exported model, and the run's metrics."""

    params: TransformParams
    model_path: Optional[Path]
    metrics: dict = field(default_factory=dict)


def export_model(transform: keras.Model, params: TransformParams, path: Path) -> Path:
    """Save ``transform`` with ``params`` as a Keras ``.keras`` file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    set_params(transform, params)
    transform.save(tmp)
    tmp.replace(path)
    return path


def _floats(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()}


def _read_log(path: Path, upto: int) -> list[dict]:
    """Entries of a JSON-lines log with ``step <= upto`` (what a resumed run keeps)."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if entry.get("step", 0) <= upto:
            entries.append(entry)
    return entries


def train(
    transform: keras.Model,
    objective: StyleObjective,
    style: np.ndarray,
    batches: Batches,
    optimizer: optax.GradientTransformation,
    steps: int,
    output_dir,
    *,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    validation_images: Sequence[np.ndarray] = (),
    validation_every: int = 500,
    log_every: int = 10,
    resume: bool = True,
    fingerprint: Optional[dict] = None,
    devices: Optional[Sequence[jax.Device]] = None,
    progress: bool = True,
    callback: Optional[Callable[[int, dict], None]] = None,
    lock: bool = True,
    on_start: Optional[Callable[[], None]] = None,
) -> TrainResult:
    """Train ``transform`` against ``objective`` on ``batches`` for ``steps`` steps in all.

    ``transform`` is a Johnson et al. transform net (a ``keras.Model``; ``style`` is its style
    image) or a network object such as :class:`~neuralstyle.fast.arbitrary_training.ArbitraryNetwork`
    (``style`` then unused: its batches bring their style images, see
    :class:`~neuralstyle.fast.data.ContentStyleBatches`); what is written below as
    ``model.keras`` is whatever the network's ``export`` writes (the arbitrary pair: ``model/``).

    Writes into ``output_dir``: ``checkpoints/<step>/`` (orbax; every ``checkpoint_every`` steps,
    on Ctrl-C and at the end), ``model.keras`` (the network of the latest checkpoint, a plain
    Keras file), ``validation/step_NNNNNN_K.png`` (the ``validation_images`` stylized every
    ``validation_every`` steps and at the end), ``log.jsonl`` (losses and images/s every
    ``log_every`` steps) and ``metrics.json``.

    With ``resume`` (the default) and a checkpoint in ``output_dir``, training continues from it:
    weights, optimizer state, step and the data pipeline's position are restored, so the run
    sees the same batches it would have seen without the interruption.  ``fingerprint`` (a
    JSON-able dict of the settings that define the run) is stored with each checkpoint and must
    match on resume, so that a changed recipe never silently continues an old run.

    When ``batches`` knows its files (:func:`~neuralstyle.fast.photo_batches` sets
    ``batches.files``; :class:`~neuralstyle.fast.data.ContentStyleBatches` also ``style_files``),
    their names are part of the fingerprint and stored with each checkpoint,
    so a resume with images added to or removed from the data (or style) folder is refused with the names
    that changed (the resumed run would no longer see exactly the batches it had not trained on).
    Everything is checked before anything in ``output_dir`` is written; ``on_start()`` runs right
    after the checks (the command line writes the run's record there, so a refused run leaves the
    record of the accepted one as it was).  ``model.keras`` always ends up holding the newest
    checkpoint, also when an earlier run was killed between a checkpoint and its export.

    With ``lock`` (the default) the whole training holds :func:`run_lock` on ``output_dir``: a
    second training into the same directory fails at once; pass ``lock=False`` when the caller
    already holds it.

    ``style`` is the ``(H, W, 3)`` style image.  ``callback(step, metrics)`` runs after every step
    (tests use it to interrupt a run).  Training starts from ``transform``'s current weights (or
    the checkpoint), and every export assigns the trained weights to ``transform``'s variables.
    """
    output_dir = Path(output_dir)
    fingerprint = json.loads(json.dumps(fingerprint or {}))
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = data_mesh(devices)
    if batches.batch_size % len(devices):
        raise ConfigError(f"batch_size {batches.batch_size} must be a multiple of the number of "
                          f"local devices ({len(devices)}) for data-parallel training")
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")
    log_every = max(1, int(log_every))
    checkpoint_every = int(checkpoint_every) if int(checkpoint_every) > 0 else steps + 1  # 0: at the end
    validation_every = max(0, int(validation_every))

    data_files = {}  # fingerprint key -> the file names it digests
    for key, attribute in FILE_LISTS.items():
        files = getattr(batches, attribute, None)
        if files is not None:
            data_files[key] = [str(f) for f in files]
            fingerprint[key] = files_digest(data_files[key])
    with run_lock(output_dir) if lock else contextlib.nullcontext():
        return _train_locked(
            as_network(transform, style), objective, batches, optimizer, steps, output_dir, mesh=mesh,
            devices=devices, fingerprint=fingerprint, data_files=data_files,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
            validation_images=validation_images, validation_every=validation_every,
            log_every=log_every, resume=resume, progress=progress, callback=callback,
            on_start=on_start)


def _train_locked(network, objective, batches, optimizer, steps, output_dir, *, mesh,
                  devices, fingerprint, data_files, checkpoint_every, keep_checkpoints,
                  validation_images, validation_every, log_every, resume, progress, callback,
                  on_start) -> TrainResult:
    """:func:`train` once its arguments are checked and the run directory is locked."""
    loss_params = replicate(objective.params, mesh)
    statistics = replicate(network.style_targets(objective, objective.params), mesh)
    state = init_state(network.initial_params(), optimizer)
    checkpointer = Checkpointer(output_dir / "checkpoints", keep_checkpoints)
    resumed_from = None
    latest = checkpointer.latest_step()
    if latest is not None:
        if not resume:
            raise ConfigError(f"{checkpointer.directory} already holds a checkpoint (step "
                              f"{latest}); pass resume=true to continue it, or choose another "
                              "output directory (name=...)")
        meta = checkpointer.read_meta(latest)  # checked before the arrays are read
        try:
            _check_fingerprint(meta.get("fingerprint", {}), fingerprint, checkpointer.directory,
                               {k: meta.get(v) for k, v in META_FILE_LISTS.items()}, data_files)
        except ConfigError:
            checkpointer.close()
            raise
        state, data_state, _ = checkpointer.restore(state, latest)
        batches.set_state(data_state)
        resumed_from = int(state.step)
        log.info("resuming from %s at step %d", checkpointer.directory, resumed_from)
    if on_start is not None:
        on_start()
    state = replicate(state, mesh)

    step_fn = make_train_step(network, optimizer)
    objective = replicate(jax.tree.map(jnp.asarray, objective), mesh)  # weight leaves on the devices
    log_path = output_dir / "log.jsonl"
    history = _read_log(log_path, int(state.step))
    atomic_write(log_path, "".join(json.dumps(e) + "\n" for e in history).encode())
    start = int(state.step)
    first_position = batches.get_state()
    first_batch = shard_batch(next(batches), mesh) if start < steps else None
    compile_time = 0.0
    if first_batch is not None:
        t0 = time.perf_counter()
        compiled = step_fn.lower(objective, state, loss_params, statistics, first_batch).compile()
        compile_time = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    else:
        compiled, flops = None, float("nan")

    # The data position that goes with the state: taken after each step and before the next batch
    # is read, so that a resumed run reads exactly the batches this one had not trained on yet.
    position = {"step": start, "data": first_position}

    exported = {"step": None, "path": None}  # the step of the model.keras written by this call

    def export(current: TrainState):
        exported["path"] = network.export(jax.device_get(current.params), output_dir)
        exported["step"] = int(current.step)

    def checkpoint(current: TrainState):
        if position["step"] != int(current.step):
            raise RuntimeError("data position and train state are out of step")  # pragma: no cover
        meta = {"fingerprint": fingerprint, "step": int(current.step), "time": time.time()}
        for key, field_name in META_FILE_LISTS.items():
            if key in data_files:
                meta[field_name] = data_files[key]
        checkpointer.save(current, position["data"], meta)
        export(current)

    def validate(current: TrainState):
        for name, out in network.validation_images(current.params, validation_images):
            save_image(np.asarray(out), output_dir / "validation" /
                       f"step_{int(current.step):06d}_{name}.png")

    bar = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    metrics, interrupted, t_first = {}, False, None
    batch = first_batch
    window_t, window_steps = time.perf_counter(), 0
    try:
        step = start
        while step < steps:
            new_state, metrics = compiled(objective, state, loss_params, statistics, batch)
            position_after = batches.get_state()
            state, position["step"], position["data"] = new_state, step + 1, position_after
            step += 1
            window_steps += 1
            batch = shard_batch(next(batches), mesh) if step < steps else None  # overlaps the step
            if step % log_every == 0 or step == steps or step % checkpoint_every == 0:
                values = _floats(metrics)  # waits for the step
                if not all(math.isfinite(v) for v in values.values()):
                    raise TrainingDivergedError(
                        f"training loss became non-finite by step {step} ("
                        + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
                        + "); lower optimizer.learning_rate or the style weight; "
                        + (f"the last checkpoint (step {checkpointer.latest_step()}) is kept"
                           if checkpointer.latest_step() is not None else "no checkpoint was written"))
                now = time.perf_counter()
                rate = window_steps * batches.batch_size / (now - window_t)
                window_t, window_steps = now, 0
                history.append({"step": step, **values, "images_per_s": rate,
                                "skipped_files": batches.skipped})
                with open(log_path, "a") as f:
                    f.write(json.dumps(history[-1]) + "\n")
                bar.set_postfix_str(f"{rate:.2f} img/s loss={values['loss']:.4g} "
                                    f"content={values['content']:.3g} style={values['style']:.3g}",
                                    refresh=False)
            if step == start + 1:  # time from the end of the first step (data pipeline warm)
                jax.block_until_ready(state)
                t_first = time.perf_counter()
            bar.update(1)
            if step % checkpoint_every == 0 and step < steps:
                checkpoint(state)
            if validation_every and step % validation_every == 0 and step < steps:
                validate(state)
            if callback is not None:
                callback(step, metrics)
    except KeyboardInterrupt:
        interrupted = True
        bar.close()
        if position["step"] == int(state.step) > (checkpointer.latest_step() or 0):
            checkpoint(state)
            print(f"interrupted: checkpoint saved at step {int(state.step)} in "
                  f"{checkpointer.directory}; run the same command again to resume")
        checkpointer.close()
        raise
    except Exception:
        checkpointer.close()  # the last checkpoint stays as it was
        raise
    finally:
        if not interrupted:
            bar.close()
    jax.block_until_ready(state)
    t_end = time.perf_counter()
    timed_steps = int(state.step) - start - 1
    per_step = (t_end - t_first) / timed_steps if timed_steps > 0 else float("nan")
    if checkpointer.latest_step() != int(state.step):
        checkpoint(state)
    elif exported["step"] != int(state.step):
        # the state is the newest checkpoint, but model.keras may be older: a run killed between
        # a checkpoint and its export leaves the export of an earlier one
        export(state)
    validate(state)
    checkpointer.close()

    final = history[-1] if history else {}
    result_metrics = {
        "steps": int(state.step),
        "resumed_from": resumed_from,
        "steps_this_run": int(state.step) - start,
        "batch_size": batches.batch_size,
        "devices": [str(d) for d in devices],
        "final": {k: final[k] for k in ("loss", "content", "style", "tv") if k in final},
        "compile_time_s": compile_time,
        "time_per_step_s": per_step,
        "images_per_s": batches.batch_size / per_step if timed_steps > 0 else float("nan"),
        "timing_note": "steps after the first; includes checkpoints and validation in between",
        "flops_per_step": flops,
        "skipped_files": batches.skipped,
        "skipped_examples": batches.skipped_files[:20],
        "images_seen": batches.consumed - batches.skipped,
        "loss_network": {"arch": objective.extractor.arch,
                         "weights": objective.extractor.weights_source,
                         "layers": list(objective.extractor.layers)},
        "transform_parameters": int(sum(np.size(x) for x in jax.tree.leaves(state.params))),
    }
    atomic_write(output_dir / "metrics.json", json.dumps(result_metrics, indent=2).encode())
    return TrainResult(jax.device_get(state.params), exported["path"], result_metrics)


#: Fingerprint key of each file list -> the attribute of the batches that holds it.
FILE_LISTS = {"data.files": "files", "style_data.files": "style_files"}
#: Fingerprint key of each file list -> the checkpoint metadata field that stores the names.
META_FILE_LISTS = {"data.files": "data_files", "style_data.files": "style_files"}


def files_digest(files: Sequence[str]) -> str:
    """``"<count> files, sha256 <digest>"`` of a list of file names (order matters)."""
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    return f"{len(files)} files, sha256 {digest}"


def _names(names: Sequence[str], shown: int = 5) -> str:
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def describe_file_change(before: Optional[Sequence[str]], now: Sequence[str], key: str = "data.dir") -> str:
    """What changed between the training files a run started with and those of now, in words;
    ``key`` is the folder's config key (``data.dir``, ``style_data.dir``)."""
    if before is None:
        return f"the training images of {key} changed (the checkpoint holds only their digest)"
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    changes = [f"{len(added)} added ({_names(added)})"] if added else []
    changes += [f"{len(removed)} removed ({_names(removed)})"] if removed else []
    return (f"{key} now has {len(now)} training images, the run was started with "
            f"{len(before)}: " + (", ".join(changes) or "the same names in another order"))


def _check_fingerprint(saved: dict, current: dict, directory: Path,
                       saved_files: Optional[dict] = None, files: Optional[dict] = None) -> None:
    """Refuse to resume a checkpoint whose settings differ from ``current``.  Keys the checkpoint
    does not record (added to the fingerprint after it was written) are not compared.
    ``saved_files`` / ``files``: ``{"data.files": names, "style_data.files": names}`` as stored in
    the checkpoint and as now, for a message naming the files added and removed."""
    saved_files, files = saved_files or {}, files or {}
    if not saved or not current:
        return
    changed = sorted(k for k in set(saved) | set(current)
                     if k in saved and saved.get(k) != current.get(k))
    if not changed:
        return
    details = [describe_file_change(saved_files.get(k), files.get(k, []), k.replace(".files", ".dir"))
               if k in FILE_LISTS else f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
               for k in changed[:6]]
    raise ConfigError(
        f"the checkpoint in {directory} was trained with different settings ({'; '.join(details)}); "
        "resume it with the original settings, or start a new run under another name (name=...)"
    )
