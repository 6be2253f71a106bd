"""The training-photo pipeline: listing, random crops, seeded shuffling, skipping corrupt files,
and a checkpointable position."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralstyle.errors import ConfigError
from neuralstyle.fast import Batches, list_images, load_crop, photo_batches, photo_dataset

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")


def make_photo_folder(folder: Path, image_dir: Path, per_photo: int = 2, corrupt: int = 0,
                      side: tuple = (80, 60)) -> Path:
    """A tiny "COCO": crops of the shared example photos as JPEGs, plus ``corrupt`` broken files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        with Image.open(image_dir / name) as im:
            im = im.convert("RGB")
            w, h = im.size
            for i in range(per_photo):
                box = (i * w // 6, i * h // 6, i * w // 6 + w // 2, i * h // 6 + h // 2)
                im.crop(box).resize(side).save(folder / f"{Path(name).stem}_{i}.jpg", quality=90)
    for i in range(corrupt):
        (folder / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated" * (i + 1))
    return folder


def test_list_images_finds_images_recursively_and_rejects_bad_folders(tmp_path, image_dir):
    make_photo_folder(tmp_path / "a", image_dir, per_photo=1)
    (tmp_path / "a" / "sub").mkdir()
    Image.new("RGB", (9, 9)).save(tmp_path / "a" / "sub" / "x.PNG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files = list_images(tmp_path / "a")
    assert [Path(f).name for f in files] == ["astronaut_0.jpg", "chelsea_0.jpg", "coffee_0.jpg", "x.PNG"]
    with pytest.raises(ConfigError, match="is not a folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no image files"):
        list_images(tmp_path / "empty")


def test_load_crop_is_a_window_of_the_resized_image(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    crop = load_crop(str(tmp_path / "x.png"), 12, np.random.default_rng(5))
    assert crop.shape == (12, 12, 3) and crop.dtype == np.float32
    resized = np.asarray(Image.fromarray(pixels).resize((20, 12), Image.Resampling.BILINEAR,
                                                        reducing_gap=3.0), np.float32) / 255.0
    offsets = np.random.default_rng(5)
    top, left = int(offsets.integers(0, 1)), int(offsets.integers(0, 20 - 12 + 1))
    np.testing.assert_allclose(crop, resized[top:top + 12, left:left + 12], atol=1e-6)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert load_crop(str(tmp_path / "bad.jpg"), 12, np.random.default_rng(0)) is None


def test_each_epoch_is_a_seeded_permutation(tmp_path, image_dir):
    files = list_images(make_photo_folder(tmp_path, image_dir))
    n = len(files)
    order = lambda ds, epoch: [ds[epoch * n + i]["path"] for i in range(n)]  # noqa: E731
    ds = photo_dataset(files, 16, seed=3)
    first, second = order(ds, 0), order(ds, 1)
    assert sorted(first) == files and sorted(second) == files
    assert first != second  # reshuffled every epoch
    assert order(photo_dataset(files, 16, seed=3), 0) == first  # same seed, same order
    assert order(photo_dataset(files, 16, seed=4), 0) != first


def test_corrupt_files_are_skipped_and_counted(tmp_path, image_dir):
    folder = make_photo_folder(tmp_path, image_dir, per_photo=1, corrupt=2)
    batches, count = photo_batches(folder, 16, batch_size=2, seed=0, num_threads=2)
    assert count == 5
    got = [next(batches) for _ in range(5)]  # 10 good images = 2 epochs of 3 good files + more
    assert all(b.shape == (2, 16, 16, 3) and np.isfinite(b).all() for b in got)
    # every element read is either in a batch or counted as skipped; 2 of every 5 are broken
    assert batches.consumed == 10 + batches.skipped
    assert batches.skipped >= 4 and sorted(Path(p).name for p in batches.skipped_files) == [
        "broken_0.jpg", "broken_1.jpg"]


def test_a_folder_of_only_broken_files_fails_clearly(tmp_path):
    for i in range(3):
        (tmp_path / f"b{i}.jpg").write_bytes(b"nope")
    batches = Batches(photo_dataset(list_images(tmp_path), 8), batch_size=1, num_threads=1,
                      max_skipped_in_a_row=6)
    with pytest.raises(ConfigError, match="6 unreadable image files in a row"):
        next(batches)


def test_restored_state_continues_with_the_same_batches(tmp_path, image_dir):
    folder = make_photo_folder(tmp_path, image_dir, per_photo=1, corrupt=1)
    a, _ = photo_batches(folder, 16, batch_size=3, seed=7, num_threads=2)
    for _ in range(2):
        next(a)
    state = a.get_state()
    expected = [next(a) for _ in range(3)]
    b, _ = photo_batches(folder, 16, batch_size=3, seed=7, num_threads=2)
    b.set_state(state)
    assert b.skipped == state["skipped"]
    for want in expected:
        np.testing.assert_array_equal(next(b), want)
    with pytest.raises(ConfigError, match="batch_size"):
        photo_batches(folder, 16, batch_size=0)
