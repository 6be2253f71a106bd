"""Compiling apply programs ahead, in a background thread, while stylize_files decodes, stylizes
and writes photos (neuralstyle/fast/ahead.py, neuralstyle/fast/stylizer.py): the same results
written in the same order as one image after the other (a later photo whose program is ready may
be stylized while an earlier one's compiles), every program compiled ahead and none twice, errors
of either thread raised where they were before, no thread left behind, and a switch to turn it
off."""

import threading
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize_weights
from PIL import Image

from neuralstyle.errors import ConfigError, ImageError
from neuralstyle.fast import Stylizer, stylize_files, transform_net
from neuralstyle.fast import stylizer as stylizer_module
from neuralstyle.fast.ahead import CompileAhead, Programs
from neuralstyle.fast.stylizer import planned_shape
from neuralstyle.images import load_image, resize_long_edge

#: (height, width) of the photos, interleaved as in benchmarks/buckets.py: 3 sizes, 2 each.
SIZES = [(20, 28), (33, 17), (40, 40)]
BACKGROUND = ("neuralstyle-compile", "neuralstyle-io")


@pytest.fixture(scope="module")
def net():
    return randomize_weights(transform_net(width=4, residual_blocks=1, seed=0))


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2 * len(SIZES)):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _ours():
    return [t.name for t in threading.enumerate() if t.name.startswith(BACKGROUND)]


@contextmanager
def compiles():
    """The names of the threads in which XLA compiled (or loaded) a program meanwhile."""
    names = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(threading.current_thread().name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


class Recording:
    """A stylizer wrapper recording each call's thread, input shape and result (and forwarding
    ``precompile`` and ``plan_sizes``, as the benchmark's and the CLI's wrappers do)."""

    def __init__(self, stylizer):
        self.stylizer, self.calls = stylizer, []
        if hasattr(stylizer, "precompile"):
            self.precompile = stylizer.precompile
        if hasattr(stylizer, "plan_sizes"):
            self.plan_sizes = stylizer.plan_sizes

    def __call__(self, image, preserve_colors=None):
        out = self.stylizer(image, preserve_colors)
        self.calls.append((threading.current_thread().name, image.shape[:2], out, image.tobytes()))
        return out


@pytest.mark.parametrize("bucket", [None, 64])  # 64 px: the three sizes share one bucket
def test_overlapped_equals_one_after_the_other_in_the_same_order(net, photos, tmp_path, bucket):
    runs = {}
    for overlap in (False, True):
        stylizer = Recording(Stylizer(net, bucket=bucket))
        with compiles() as threads:
            written = stylize_files(stylizer, photos, tmp_path / f"out_{overlap}", bit_depth=16,
                                    overlap=overlap, say=lambda m: None)
        runs[overlap] = stylizer, written, threads
    (seq, seq_written, seq_threads), (ovl, ovl_written, ovl_threads) = runs[False], runs[True]
    names = [f"{i:02d}.png" for i in range(2 * len(SIZES))]
    assert [p.name for p in seq_written] == [p.name for p in ovl_written] == names  # input order
    assert [c[1] for c in seq.calls] == [SIZES[i % 3] for i in range(6)]
    # overlapped, a photo whose program is ready may go before one whose program still compiles
    assert sorted(c[1] for c in ovl.calls) == sorted(c[1] for c in seq.calls)
    overlapped = {c[3]: c[2] for c in ovl.calls}
    for _, shape, a, key in seq.calls:
        np.testing.assert_allclose(overlapped[key], a, rtol=0, atol=1e-6, err_msg=str(shape))  # float32 rounding
    for a, b in zip(seq_written, ovl_written):
        assert a.read_bytes() == b.read_bytes()
    # every program compiled in the background thread, once, and the calls ran those executables
    # (the jit path, which would compile on a call, was never taken); the stylizer ran here
    programs = len(SIZES) if bucket is None else len({(64 * -(-h // 64), 64 * -(-w // 64)) for h, w in SIZES})
    assert programs == (3 if bucket is None else 1)
    assert ovl_threads == ["neuralstyle-compile_0"] * programs  # nothing at all compiled on the way
    assert seq_threads == ["MainThread"] * programs
    assert {c[0] for c in ovl.calls} == {"MainThread"}
    seq_program = seq.stylizer.bucketed._run if bucket else seq.stylizer._apply
    ovl_program = ovl.stylizer.bucketed._run if bucket else ovl.stylizer._apply
    assert ovl_program.compiled() == programs and ovl_program._cache_size() == 0
    assert seq_program.compiled() == 0 and seq_program._cache_size() == programs
    if bucket:
        assert ovl.stylizer.bucketed.traces == programs  # traced once each, ahead
    assert not _ours()


def test_writes_happen_in_input_order_off_the_calling_thread(net, photos, tmp_path, monkeypatch):
    order = []
    save = stylizer_module._save

    def recording_save(plan, *args):
        order.append((plan.source.name, threading.current_thread().name))
        return save(plan, *args)

    monkeypatch.setattr(stylizer_module, "_save", recording_save)
    stylize_files(Stylizer(net), photos, tmp_path / "a", say=lambda m: None)
    assert [n for n, _ in order] == [f"{i:02d}.png" for i in range(6)]
    assert {t for _, t in order} == {"neuralstyle-io_0"}
    order.clear()
    stylize_files(Stylizer(net), photos, tmp_path / "b", say=lambda m: None, overlap=False)
    assert [n for n, _ in order] == [f"{i:02d}.png" for i in range(6)]
    assert {t for _, t in order} == {"MainThread"}


class Watched(Recording):
    """Also records the background threads alive during each call."""

    alive: list

    def __call__(self, image, preserve_colors=None):
        self.alive.extend(_ours())
        return super().__call__(image, preserve_colors)


def test_off_switch_compiles_in_turn_and_starts_no_thread(net, photos, tmp_path):
    stylizer = Watched(Stylizer(net, bucket=None))
    stylizer.alive, ahead = [], []
    stylizer.precompile = ahead.append
    stylize_files(stylizer, photos, tmp_path / "out", overlap=False, say=lambda m: None)
    assert ahead == [] and stylizer.alive == [] and len(stylizer.calls) == 6
    assert stylizer.stylizer._apply._cache_size() == len(SIZES)  # each compiled on first use
    stylize_files(stylizer, photos, tmp_path / "out", say=lambda m: None)  # on: the shapes, in order
    assert ahead == SIZES and set(stylizer.alive) >= {"neuralstyle-io_0"}


def test_plain_callables_get_the_io_thread_only(photos, tmp_path):
    def identity(image, preserve_colors=None):
        return image

    written = stylize_files(identity, photos, tmp_path / "out", say=lambda m: None)
    assert [p.name for p in written] == [f"{i:02d}.png" for i in range(6)]
    np.testing.assert_array_equal(load_image(written[1]), load_image(photos / "01.png"))
    assert not _ours()


class Failing:
    """A stylizer whose program for one shape fails to compile (after a moment, in its thread)."""

    def __init__(self, bad, error=RuntimeError("XLA said no")):
        self.bad, self.error, self.calls = bad, error, []

    def precompile(self, shape):
        if tuple(shape) == self.bad:
            threading.Event().wait(0.05)
            raise self.error

    def __call__(self, image, preserve_colors=None):
        self.calls.append(image.shape[:2])
        return image


def test_a_background_compile_error_is_raised_at_its_first_image(photos, tmp_path):
    stylizer = Failing(SIZES[1])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="XLA said no") as err:
        stylize_files(stylizer, photos, out, say=lambda m: None)
    assert any("compiling ahead" in note and "33x17" in note for note in err.value.__notes__)
    # stopped at the first image that needed the program (a later photo of a ready program may
    # have been stylized meanwhile, and is not written: the files are those written in turn)
    assert stylizer.calls[0] == SIZES[0] and SIZES[1] not in stylizer.calls
    assert sorted(p.name for p in out.iterdir()) == ["00.png"]  # what came before is written, whole
    assert not _ours()


class Slow:
    """A stylizer whose program for ``slow`` compiles until a photo of another size went ahead of
    the first ``slow`` one (was stylized second or later before that program was ready), or
    ``timeout`` s pass: in input order that never happens."""

    def __init__(self, slow, timeout=20.0):
        self.slow, self.timeout, self.calls = slow, timeout, []
        self.went_ahead, self.compiled = threading.Event(), threading.Event()

    def precompile(self, shape):
        if tuple(shape) == self.slow:
            self.went_ahead.wait(self.timeout)
            self.compiled.set()

    def __call__(self, image, preserve_colors=None):
        if tuple(image.shape[:2]) != self.slow and self.calls and not self.compiled.is_set():
            self.went_ahead.set()
        self.calls.append(image.shape[:2])
        return image


def test_a_photo_whose_program_is_ready_goes_before_one_still_compiling(photos, tmp_path, monkeypatch):
    """Overlapped, while the program of the next photo to write compiles, a later photo of the
    window whose program is ready is stylized (its result waits); files are still written in input
    order, and the same as in turn."""
    order = []
    save = stylizer_module._save

    def recording_save(plan, *args):
        order.append(plan.source.name)
        return save(plan, *args)

    monkeypatch.setattr(stylizer_module, "_save", recording_save)
    stylizer = Slow(SIZES[1])  # photos 01 and 04
    written = stylize_files(stylizer, photos, tmp_path / "out", say=lambda m: None)
    assert stylizer.went_ahead.is_set()
    first_slow = stylizer.calls.index(SIZES[1])
    assert first_slow > 1  # photo 01 was not second: later ones went before it
    assert stylizer.calls[:first_slow] == [SIZES[0]] * 2  # 00 and 03 (02's program compiles after 01's)
    assert [p.name for p in written] == order == [f"{i:02d}.png" for i in range(6)]
    for path in written:
        np.testing.assert_array_equal(load_image(path), load_image(photos / path.name))
    # a window of one image (one photo's pixels fill it): in input order
    monkeypatch.setattr(stylizer_module, "LOOKAHEAD_PIXELS", 1)
    stylizer = Slow(SIZES[1], timeout=0.2)
    stylize_files(stylizer, photos, tmp_path / "one", say=lambda m: None)
    assert stylizer.calls == [SIZES[i % 3] for i in range(6)] and not stylizer.went_ahead.is_set()
    assert not _ours()


def test_an_unreadable_photo_is_named_with_the_same_files_written(net, photos, tmp_path):
    (photos / "03.png").write_bytes(b"not a png")
    assert planned_shape(photos / "03.png") is None
    for overlap in (False, True):
        out = tmp_path / f"out_{overlap}"
        with pytest.raises(ImageError, match="03.png"):
            stylize_files(Stylizer(net), photos, out, overlap=overlap, say=lambda m: None)
        assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png"]
    assert not _ours()


def test_a_failed_write_stops_there_as_in_turn(net, photos, tmp_path, monkeypatch):
    save = stylizer_module._save

    def full_disk(plan, *args):
        if plan.source.name == "02.png":
            raise OSError(28, "No space left on device")
        return save(plan, *args)

    monkeypatch.setattr(stylizer_module, "_save", full_disk)
    for overlap in (False, True):
        out = tmp_path / f"out_{overlap}"
        with pytest.raises(OSError, match="No space"):
            stylize_files(Stylizer(net), photos, out, overlap=overlap, say=lambda m: None)
        assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png"]
    assert not _ours()


def test_compile_ahead_leaves_no_thread_when_the_caller_fails():
    release = threading.Event()

    def slow(shape):
        release.wait(5)

    with pytest.raises(KeyError):
        with CompileAhead(slow, [(1, 1), (2, 2), (3, 3)]):
            release.set()
            raise KeyError("caller")
    assert not _ours()
    with CompileAhead(None, [(1, 1)]) as ahead:  # nothing to compile: nothing runs
        ahead.wait((1, 1))
        assert not _ours()


def test_planned_shape_follows_exif_rotation_and_the_size_rule(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoded image is 30 x 20
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), np.uint8)).save(path, exif=exif)
    for size in (None, 64, 17):
        image = load_image(path)
        if size:
            image = resize_long_edge(image, size)
        assert planned_shape(path, size) == image.shape[:2], size


def test_programs_run_the_executable_compiled_ahead():
    traces = []

    def f(params, x):
        traces.append(x.shape)
        return jnp.tanh(x * params["w"]) + params["b"][None, :]

    params = {"w": jnp.float32(1.5), "b": jnp.ones((3,), jnp.float32)}
    program = Programs(jax.jit(f))
    program.compile(params, jax.ShapeDtypeStruct((2, 3), jnp.float32))
    program.compile(params, jax.ShapeDtypeStruct((2, 3), jnp.float32))  # found: no second trace
    assert traces == [(2, 3)] and program.compiled() == 1
    x = jnp.asarray(np.random.default_rng(2).random((2, 3), np.float32))
    with compiles() as threads:
        got = program(params, x)
    assert threads == [] and traces == [(2, 3)]  # the kept executable: nothing traced or compiled
    np.testing.assert_array_equal(got, jax.jit(f)(params, x))
    assert program(params, jnp.ones((4, 3))).shape == (4, 3)  # other shapes: jit, as before
    assert jax.jit(lambda p, y: program(p, y))(params, x).shape == (2, 3)  # traced calls too


def test_arbitrary_stylizer_precompiles_what_stylize_runs(tmp_path):
    from neuralstyle.arbitrary import ArbitraryStylizer, style_predictor, style_transformer

    network = ArbitraryStylizer(style_predictor(weights=None), style_transformer(weights=None, width=2,
                                                                                 residual_blocks=1),
                                style_size=32, bucket=None)
    image = np.random.default_rng(3).random((24, 36, 3)).astype(np.float32)
    embedding = np.zeros(100, np.float32)
    network.precompile(image.shape, strength=0.5)
    assert network._transform.compiled() == 1 and network._predict.compiled() == 1
    network.stylize(image, embedding, strength=0.5)
    # the transformer and the photo's own embedding ran the executables compiled ahead: their jit
    # path (which compiles on a call) was never taken
    assert network._transform._cache_size() == 0 and network._predict._cache_size() == 0
    network.stylize(image[:20], embedding, strength=0.5)  # a shape not compiled ahead: jit, as before
    assert network._transform._cache_size() == 1 and network._predict._cache_size() == 1


def test_apply_config_has_the_switch(tmp_path):
    from neuralstyle.apply import apply_from_config
    from neuralstyle.recipe import compose

    assert compose("apply", ["model=m.keras", "input=x.png"]).overlap is True
    cfg = compose("apply", ["model=m.keras", f"input={tmp_path}", "overlap=maybe"])
    with pytest.raises(ConfigError, match="overlap must be true or false"):
        apply_from_config(cfg, tmp_path)
