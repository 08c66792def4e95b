"""Class labels from a ``dataset.json`` file in the layout of StyleGAN2-ADA's dataset tool.

The file contains ``{"labels": [["00000/img00000000.png", 6], ...]}`` with paths relative to the
dataset root and written with forward slashes. ``"labels": null`` means an unlabeled dataset.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

from pathlength.data.dataset import DatasetError

LABELS_FILE_NAME = "dataset.json"


def parse_labels_json(text: str | bytes, where: str) -> dict[str, int] | None:
    """Parse a ``dataset.json`` and return a map from relative image path to class index.

    Each label is an integer class >= 0, an integral float such as ``6.0``, or a one-hot list
    such as ``[0, 0, 1]`` (class 2). Returns None when ``"labels"`` is missing or null.
    ``where`` names the file in error messages.

    Raises:
        DatasetError: on invalid JSON, a wrong layout or a label that is not a class.

    Example:
        >>> parse_labels_json('{"labels": [["a.png", 1], ["b/c.png", 0]]}', "dataset.json")
        {'a.png': 1, 'b/c.png': 0}
    """
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{where} is not valid JSON ({error}). Fix or delete the file.") from error

    if not isinstance(document, Mapping):
        raise DatasetError(
            f'{where} must contain a JSON object such as {{"labels": [["img.png", 0], ...]}}, '
            f"got {type(document).__name__}"
        )

    entries = document.get("labels")
    if entries is None:
        return None

    if not isinstance(entries, list):
        raise DatasetError(
            f'"labels" in {where} must be a list of [path, class] pairs or null, '
            f"got {type(entries).__name__}"
        )

    labels: dict[str, int] = {}
    for entry in entries:
        is_pair = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
        if not is_pair:
            raise DatasetError(f'each entry of "labels" in {where} must be [path, class], got {entry!r}')

        path, value = entry
        labels[path] = _to_class_index(value, path, where)
    return labels


def assign_labels(
    names: Sequence[str],
    labels: Mapping[str, int],
    where: str,
) -> torch.Tensor:
    """Return the int64 tensor [len(names)] of class indices that ``labels`` gives ``names``.

    Raises:
        DatasetError: when an image has no label, naming the first such image and the count.
    """
    missing = [name for name in names if name not in labels]
    if missing:
        raise DatasetError(
            f"{where} has no label for {len(missing)} of {len(names)} images, "
            f"for example {missing[0]!r}. Add a label for each image or set \"labels\" to null."
        )

    return torch.tensor([labels[name] for name in names], dtype=torch.int64)


def _to_class_index(value: object, path: str, where: str) -> int:
    if isinstance(value, bool):
        raise DatasetError(f"label of {path!r} in {where} must be a class index >= 0, got {value!r}")

    if isinstance(value, int) and value >= 0:
        return value

    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)

    if isinstance(value, list) and _is_one_hot(value):
        return value.index(max(value))

    raise DatasetError(
        f"label of {path!r} in {where} must be a class index >= 0 or a one-hot list, got {value!r}. "
        "pathlength supports class labels only."
    )


def _is_one_hot(values: list) -> bool:
    is_numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not values or not is_numeric:
        return False

    ones = sum(1 for v in values if v == 1)
    zeros = sum(1 for v in values if v == 0)
    return ones == 1 and ones + zeros == len(values)
