"""Tests for pathlength.data: the bundled digits, image folders, dataset zips and ImageDataset."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathlength.data import (
    BUNDLED_DATASETS,
    DatasetError,
    ImageDataset,
    float_to_uint8,
    load_archive,
    load_dataset,
    load_folder,
    load_image,
    uint8_to_float,
)

RESOLUTION = 16


def _solid(mode: str, size: tuple[int, int], color) -> Image.Image:
    return Image.new(mode, size, color)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise, mode="RGB"))
    return data[: len(data) // 2]


def _random_bytes() -> bytes:
    return np.random.default_rng(1).integers(0, 256, size=500, dtype=np.uint8).tobytes()


# Bundled digits


@pytest.fixture(scope="module")
def digits32() -> ImageDataset:
    return load_dataset("digits", 32)


def test_digits_shape_and_labels(digits32):
    from sklearn.datasets import load_digits

    assert BUNDLED_DATASETS == ("digits",)
    assert len(digits32) == 1797
    assert digits32.images.shape == (1797, 1, 32, 32)
    assert digits32.images.dtype == torch.uint8
    assert digits32.resolution == 32
    assert digits32.num_channels == 1
    assert digits32.num_classes == 10
    assert digits32.has_labels
    assert digits32.name == "digits"
    assert torch.equal(digits32.labels, torch.as_tensor(load_digits().target, dtype=torch.int64))


def test_digits_samples_span_minus_one_to_one(digits32):
    image, label = digits32[0]

    assert image.dtype == torch.float32
    assert image.shape == (1, 32, 32)
    assert label.dtype == torch.int64
    assert int(label) == 0
    # The background is exactly 0 and some pixels carry full ink (16), so both ends occur.
    assert int(digits32.images.min()) == 0
    assert int(digits32.images.max()) == 255
    assert float(image.min()) == -1.0
    assert float(image.max()) <= 1.0


def test_digits_native_resolution_keeps_values():
    from sklearn.datasets import load_digits

    dataset = load_dataset("digits", 8)
    expected = np.rint(load_digits().images / 16.0 * 255.0).astype(np.uint8)

    # Bilinear resizing to the input's own size is the identity, so only the value map remains.
    assert torch.equal(dataset.images[:, 0], torch.from_numpy(expected))


def test_digits_three_channels_repeat_gray():
    dataset = load_dataset("digits", 4, channels=3)

    assert dataset.images.shape == (1797, 3, 4, 4)
    assert torch.equal(dataset.images[:, 1], dataset.images[:, 0])
    assert torch.equal(dataset.images[:, 2], dataset.images[:, 0])


def test_unknown_bundled_name_lists_valid_names():
    with pytest.raises(ValueError, match="'digits'") as raised:
        load_dataset("mnist", 32)

    assert "mnist" in str(raised.value)


# Argument checks


@pytest.mark.parametrize("resolution", [0, 2, 3, 6, 12, 100, -8, True, 16.0])
def test_invalid_resolution_rejected(resolution):
    with pytest.raises(ValueError, match=f"resolution must be a power of two.*got {resolution!r}"):
        load_dataset("digits", resolution)


@pytest.mark.parametrize("channels", [0, 2, 4, True])
def test_invalid_channels_rejected(channels):
    with pytest.raises(ValueError, match=f"channels must be 1.*got {channels!r}"):
        load_dataset("digits", 8, channels=channels)


# Folders


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    _save(folder / "gray.png", _solid("L", (20, 30), 200))
    _save(folder / "rgb_wide.png", _solid("RGB", (64, 48), (255, 0, 0)))
    _save(folder / "rgba.png", _solid("RGBA", (16, 16), (255, 255, 255, 0)))
    _save(folder / "palette.png", _solid("RGB", (10, 10), (0, 0, 255)).convert("P"))
    _save(folder / "photo.jpg", _solid("RGB", (33, 17), (0, 255, 0)), quality=95)
    _save(folder / "bitmap.bmp", _solid("RGB", (8, 8), (10, 20, 30)))
    _save(folder / "lossless.webp", _solid("RGB", (24, 24), (40, 50, 60)), lossless=True)
    _save(folder / "one_bit.png", _solid("1", (12, 12), 1))
    (folder / "notes.txt").write_text("not an image, ignored by extension")
    return folder


def test_folder_mixed_modes_become_rgb(mixed_folder):
    dataset = load_dataset(mixed_folder, RESOLUTION)

    assert len(dataset) == 8
    assert dataset.images.shape == (8, 3, RESOLUTION, RESOLUTION)
    assert dataset.num_channels == 3
    assert not dataset.has_labels
    assert dataset.num_classes == 0
    assert dataset.name == "mixed"
    assert torch.equal(dataset.labels, torch.full((8,), -1, dtype=torch.int64))


def test_folder_mixed_modes_pixel_values(mixed_folder):
    dataset = load_dataset(mixed_folder, RESOLUTION)
    # Sorted order: bitmap.bmp, gray.png, lossless.webp, one_bit.png, palette.png, photo.jpg,
    # rgb_wide.png, rgba.png.
    by_name = dict(
        zip(
            ["bitmap", "gray", "webp", "one_bit", "palette", "photo", "rgb_wide", "rgba"],
            dataset.images,
        )
    )

    assert torch.all(by_name["bitmap"] == torch.tensor([10, 20, 30]).view(3, 1, 1))
    assert torch.all(by_name["gray"] == 200)
    assert torch.all(by_name["webp"] == torch.tensor([40, 50, 60]).view(3, 1, 1))
    assert torch.all(by_name["one_bit"] == 255)
    assert torch.all(by_name["palette"] == torch.tensor([0, 0, 255]).view(3, 1, 1))
    assert torch.all(by_name["rgb_wide"] == torch.tensor([255, 0, 0]).view(3, 1, 1))
    # Fully transparent white composites on black.
    assert torch.all(by_name["rgba"] == 0)
    # JPEG is lossy, so green is checked within 8 levels.
    photo = by_name["photo"].to(torch.int32)
    assert int((photo[1] - 255).abs().max()) <= 8
    assert int(photo[0].max()) <= 8
    assert int(photo[2].max()) <= 8


def test_folder_channels_one_converts_color(mixed_folder):
    dataset = load_dataset(mixed_folder, 8, channels=1)

    assert dataset.images.shape == (8, 1, 8, 8)
    assert dataset.num_channels == 1
    # Pure red in ITU-R 601-2 luma: 255 * 299 / 1000 = 76.2, which Pillow rounds to 76.
    assert torch.all(dataset.images[6] == 76)


def test_channels_none_all_grayscale_gives_one(tmp_path):
    folder = tmp_path / "gray"
    _save(folder / "a.png", _solid("L", (16, 16), 10))
    _save(folder / "b.png", _solid("LA", (20, 16), (90, 255)))
    _save(folder / "c.png", Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)))

    dataset = load_dataset(folder, 8)

    assert dataset.num_channels == 1
    assert dataset.images.shape == (3, 1, 8, 8)


def test_channels_none_one_color_gives_three(tmp_path):
    folder = tmp_path / "gray_and_color"
    _save(folder / "a.png", _solid("L", (16, 16), 10))
    _save(folder / "b.png", _solid("L", (16, 16), 20).convert("P"))

    dataset = load_dataset(folder, 8)

    assert dataset.num_channels == 3
    # The grayscale image repeats its value over the three channels.
    assert torch.all(dataset.images[0] == 10)
    assert torch.all(dataset.images[1] == 20)


def test_sixteen_bit_gray_scales_to_eight_bits(tmp_path):
    pixels = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(pixels))

    image = load_image(path, 4)

    assert image.dtype == torch.uint8
    assert image.shape == (1, 4, 4)
    assert image[0, 0].tolist() == [0, 1, 128, 255]


def test_partial_alpha_composites_on_black(tmp_path):
    path = _save(tmp_path / "half.png", _solid("RGBA", (8, 8), (200, 100, 50, 128)))

    image = load_image(path, 8, channels=3)

    # color * 128 / 255, within one level for Pillow's integer blending.
    expected = torch.tensor([200, 100, 50]) * 128 / 255
    assert float((image[:, 0, 0].float() - expected).abs().max()) <= 1.0


def test_palette_transparency_composites_on_black(tmp_path):
    image = _solid("P", (8, 8), 1)
    image.putpalette([255, 255, 255, 0, 255, 0] + [0] * 762)
    path = _save(tmp_path / "palette.png", image, transparency=1)

    loaded = load_image(path, 8)

    assert loaded.shape == (3, 8, 8)
    assert torch.all(loaded == 0)


def test_center_crop_keeps_middle(tmp_path):
    pixels = np.zeros((30, 90, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:60] = (0, 255, 0)
    pixels[:, 60:] = (0, 0, 255)
    path = _save(tmp_path / "stripes.png", Image.fromarray(pixels))

    image = load_image(path, 16)

    # The crop happens before resizing, so no red or blue from outside the square leaks in.
    assert torch.all(image == torch.tensor([0, 255, 0]).view(3, 1, 1))


def test_exif_orientation_applied(tmp_path):
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0)
    pixels[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotate 180 degrees.
    path = _save(tmp_path / "rotated.png", Image.fromarray(pixels), exif=exif)

    image = load_image(path, 16)

    assert image[:, 0, 0].tolist() == [0, 0, 255]
    assert image[:, 0, 15].tolist() == [255, 0, 0]


def test_nested_folders_found_in_sorted_order(tmp_path):
    folder = tmp_path / "nested"
    values = {"b.png": 40, "a/z.png": 30, "a/b/c.png": 20, "a/b/a.PNG": 10}
    for name, value in values.items():
        _save(folder / name, _solid("L", (8, 8), value), format="PNG")
    _save(folder / ".hidden" / "skip.png", _solid("L", (8, 8), 250))
    _save(folder / ".skip.png", _solid("L", (8, 8), 250))

    dataset = load_dataset(folder, 8)

    assert len(dataset) == 4
    # Sorted relative paths: a/b/a.PNG, a/b/c.png, a/z.png, b.png.
    assert dataset.images[:, 0, 0, 0].tolist() == [10, 20, 30, 40]


def test_loading_twice_gives_same_order(mixed_folder):
    first = load_dataset(mixed_folder, 8)
    second = load_dataset(mixed_folder, 8)

    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)


def test_folder_dataset_json_labels(tmp_path):
    folder = tmp_path / "labeled"
    _save(folder / "x" / "one.png", _solid("L", (8, 8), 1))
    _save(folder / "two.png", _solid("L", (8, 8), 2))
    labels = {"labels": [["two.png", 4], ["x/one.png", 1]]}
    (folder / "dataset.json").write_text(json.dumps(labels))

    dataset = load_dataset(folder, 8)

    assert dataset.has_labels
    assert dataset.labels.tolist() == [4, 1]
    assert dataset.num_classes == 5


def test_empty_folder_names_folder(tmp_path):
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")

    with pytest.raises(DatasetError, match="no images found in folder .*empty_dir"):
        load_dataset(folder, 8)


def test_missing_path_names_path(tmp_path):
    missing = tmp_path / "does_not_exist"

    with pytest.raises(DatasetError, match="does_not_exist.*not found"):
        load_dataset(missing, 8)
    with pytest.raises(DatasetError, match="image folder not found.*does_not_exist"):
        load_folder(missing, 8)
    with pytest.raises(DatasetError, match="dataset zip not found.*does_not_exist"):
        load_archive(missing, 8)


def test_plain_file_source_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")

    with pytest.raises(DatasetError, match="notes.txt.*not a zip archive"):
        load_dataset(path, 8)


# Invalid files


@pytest.mark.parametrize(
    ("file_name", "make_bytes"),
    [("noise.png", _random_bytes), ("half.png", _truncated_png)],
)
def test_invalid_folder_image_names_file(tmp_path, file_name, make_bytes):
    folder = tmp_path / "broken"
    _save(folder / "good.png", _solid("L", (8, 8), 5))
    (folder / file_name).write_bytes(make_bytes())

    with pytest.raises(DatasetError, match=file_name) as raised:
        load_dataset(folder, 8)

    assert "skip_invalid=True" in str(raised.value)
    assert "Remove the file" in str(raised.value)


@pytest.mark.parametrize(
    ("member", "make_bytes"),
    [("00000/noise.png", _random_bytes), ("00000/half.png", _truncated_png)],
)
def test_invalid_zip_member_names_file(tmp_path, member, make_bytes):
    path = _write_zip(
        tmp_path / "broken.zip",
        {"00000/good.png": _png_bytes(_solid("L", (8, 8), 5)), member: make_bytes()},
    )

    with pytest.raises(DatasetError, match=member) as raised:
        load_dataset(path, 8)

    assert "broken.zip" in str(raised.value)
    assert "skip_invalid=True" in str(raised.value)


def test_skip_invalid_counts_skipped(tmp_path, caplog):
    folder = tmp_path / "partly_broken"
    for index in range(3):
        _save(folder / f"good{index}.png", _solid("L", (8, 8), 10 * index))
    (folder / "noise.png").write_bytes(_random_bytes())
    (folder / "sub").mkdir()
    (folder / "sub" / "half.png").write_bytes(_truncated_png())

    with caplog.at_level(logging.WARNING, logger="pathlength.data"):
        dataset = load_dataset(folder, 8, skip_invalid=True)

    assert len(dataset) == 3
    assert dataset.num_skipped == 2
    assert any(name.endswith("noise.png'") for name in dataset.skipped_files)
    assert any(name.endswith("half.png'") for name in dataset.skipped_files)
    assert dataset.images[:, 0, 0, 0].tolist() == [0, 10, 20]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 invalid image(s) of 5" in warnings[0].getMessage()


def test_skip_invalid_zip_drops_labels_too(tmp_path):
    members = {
        "a.png": _png_bytes(_solid("L", (8, 8), 1)),
        "b.png": _random_bytes(),
        "c.png": _png_bytes(_solid("L", (8, 8), 3)),
        "dataset.json": json.dumps({"labels": [["a.png", 0], ["b.png", 1], ["c.png", 2]]}).encode(),
    }
    path = _write_zip(tmp_path / "partly.zip", members)

    dataset = load_dataset(path, 8, skip_invalid=True)

    assert dataset.num_skipped == 1
    assert dataset.labels.tolist() == [0, 2]
    assert dataset.num_classes == 3


def test_skip_invalid_all_broken_raises(tmp_path):
    folder = tmp_path / "all_broken"
    folder.mkdir()
    (folder / "noise.png").write_bytes(_random_bytes())

    with pytest.raises(DatasetError, match="none of the 1 images"):
        load_dataset(folder, 8, skip_invalid=True)


def test_skipped_counters_zero_without_skips(mixed_folder):
    dataset = load_dataset(mixed_folder, 8, skip_invalid=True)

    assert dataset.num_skipped == 0
    assert dataset.skipped_files == ()


# Dataset zips


def test_zip_with_dataset_json_labels(tmp_path):
    members = {
        "00000/img00000000.png": _png_bytes(_solid("RGB", (8, 8), (1, 2, 3))),
        "00000/img00000001.png": _png_bytes(_solid("RGB", (8, 8), (4, 5, 6))),
        "00001/img00001000.png": _png_bytes(_solid("RGB", (8, 8), (7, 8, 9))),
        "dataset.json": json.dumps(
            {
                "labels": [
                    ["00001/img00001000.png", 2],
                    ["00000/img00000001.png", 0],
                    ["00000/img00000000.png", 6],
                ]
            }
        ).encode(),
    }
    path = _write_zip(tmp_path / "labeled-8x8.zip", members)

    dataset = load_dataset(path, 8)

    assert dataset.name == "labeled-8x8"
    assert dataset.images.shape == (3, 3, 8, 8)
    assert dataset.images[:, 0, 0, 0].tolist() == [1, 4, 7]
    assert dataset.has_labels
    assert dataset.labels.tolist() == [6, 0, 2]
    assert dataset.num_classes == 7
    assert int(dataset[0][1]) == 6


def test_zip_without_labels(tmp_path):
    members = {
        "img0.png": _png_bytes(_solid("L", (12, 12), 9)),
        "img1.png": _png_bytes(_solid("L", (12, 12), 99)),
        "__MACOSX/._img0.png": b"resource fork, not an image",
    }
    path = _write_zip(tmp_path / "plain.zip", members)

    dataset = load_dataset(path, 4)

    assert len(dataset) == 2
    assert dataset.num_channels == 1
    assert not dataset.has_labels
    assert dataset.num_classes == 0
    assert dataset.labels.tolist() == [-1, -1]
    assert int(dataset[1][1]) == -1


def test_zip_null_labels_unlabeled(tmp_path):
    members = {
        "img0.png": _png_bytes(_solid("L", (8, 8), 9)),
        "dataset.json": b'{"labels": null}',
    }
    path = _write_zip(tmp_path / "null.zip", members)

    dataset = load_dataset(path, 8)

    assert not dataset.has_labels


def test_one_hot_labels_become_classes(tmp_path):
    members = {
        "a.png": _png_bytes(_solid("L", (8, 8), 9)),
        "b.png": _png_bytes(_solid("L", (8, 8), 9)),
        "dataset.json": json.dumps({"labels": [["a.png", [0, 0, 1]], ["b.png", 1.0]]}).encode(),
    }
    path = _write_zip(tmp_path / "one_hot.zip", members)

    dataset = load_dataset(path, 8)

    assert dataset.labels.tolist() == [2, 1]


@pytest.mark.parametrize(
    ("labels_json", "message"),
    [
        ('{"labels": [["a.png", 1]]}', "no label for 1 of 2 images, for example 'b.png'"),
        ('{"labels": [["a.png", 1], ["b.png", -3]]}', "label of 'b.png'.*got -3"),
        ('{"labels": [["a.png", 1], ["b.png", [0.3, 0.7]]]}', "class labels only"),
        ('{"labels": [["a.png"]]}', r"must be \[path, class\]"),
        ("[1, 2]", "must contain a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_dataset_json_rejected(tmp_path, labels_json, message):
    members = {
        "a.png": _png_bytes(_solid("L", (8, 8), 9)),
        "b.png": _png_bytes(_solid("L", (8, 8), 9)),
        "dataset.json": labels_json.encode(),
    }
    path = _write_zip(tmp_path / "bad_labels.zip", members)

    with pytest.raises(DatasetError, match=message) as raised:
        load_dataset(path, 8)

    assert "dataset.json" in str(raised.value)


def test_zip_without_images_names_zip(tmp_path):
    path = _write_zip(tmp_path / "no_images.zip", {"readme.txt": b"nothing"})

    with pytest.raises(DatasetError, match="no images found in zip .*no_images.zip"):
        load_dataset(path, 8)


def test_corrupt_zip_names_file(tmp_path):
    path = tmp_path / "corrupt.zip"
    path.write_bytes(b"PK\x03\x04" + _random_bytes())

    with pytest.raises(DatasetError, match="corrupt.zip"):
        load_archive(path, 8)


def test_zip_matches_folder_of_same_tree(tmp_path, mixed_folder):
    members = {
        path.relative_to(mixed_folder).as_posix(): path.read_bytes()
        for path in mixed_folder.rglob("*")
        if path.is_file()
    }
    archive_path = _write_zip(tmp_path / "mixed.zip", dict(reversed(list(members.items()))))

    from_zip = load_dataset(archive_path, 8)
    from_folder = load_dataset(mixed_folder, 8)

    assert torch.equal(from_zip.images, from_folder.images)


# ImageDataset


def test_get_batch_matches_getitem(digits32):
    indices = torch.tensor([5, 0, 1796, 5])

    images, labels = digits32.get_batch(indices)

    assert images.shape == (4, 1, 32, 32)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    for row, index in enumerate(indices.tolist()):
        assert torch.equal(images[row], digits32[index][0])
        assert int(labels[row]) == int(digits32[index][1])


def test_sample_batch_reproducible_with_generator(digits32):
    first, first_labels = digits32.sample_batch(8, torch.Generator().manual_seed(3))
    second, second_labels = digits32.sample_batch(8, torch.Generator().manual_seed(3))

    assert first.shape == (8, 1, 32, 32)
    assert torch.equal(first, second)
    assert torch.equal(first_labels, second_labels)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        digits32.sample_batch(0)


def test_dataloader_collates_samples(digits32):
    loader = torch.utils.data.DataLoader(digits32, batch_size=4)

    images, labels = next(iter(loader))

    assert images.shape == (4, 1, 32, 32)
    assert labels.tolist() == [0, 1, 2, 3]


def test_image_dataset_rejects_bad_tensors():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 8, 8), name="float")
    with pytest.raises(ValueError, match="square"):
        ImageDataset(torch.zeros(2, 1, 8, 4, dtype=torch.uint8), name="wide")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        ImageDataset(torch.zeros(2, 2, 8, 8, dtype=torch.uint8), name="two")
    with pytest.raises(ValueError, match="resolution must be a power of two.*got 6"):
        ImageDataset(torch.zeros(2, 1, 6, 6, dtype=torch.uint8), name="six")
    with pytest.raises(ValueError, match=r"labels must have shape \[2\]"):
        ImageDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0]), name="short")


def test_uint8_float_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8)

    values = uint8_to_float(pixels)

    assert float(values[0]) == -1.0
    assert float(values[255]) == 1.0
    assert torch.equal(float_to_uint8(values), pixels)
