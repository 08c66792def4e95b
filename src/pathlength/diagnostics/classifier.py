"""A small CNN trained on the bundled scikit-learn digits, whose features give the diagnostics an
offline feature distance and Frechet distance. It trains in seconds from a fixed seed and is cached
as safetensors in the user's cache folder."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

logger = logging.getLogger(__name__)

CACHE_ENVIRONMENT_VARIABLE = "PATHLENGTH_CACHE"
INPUT_RESOLUTION = 8
NUM_CLASSES = 10
FEATURE_DIM = 64
# Bumped whenever the architecture or the training recipe changes, so stale cache files are ignored.
FORMAT_VERSION = 1
HELDOUT_FRACTION = 0.2


def cache_dir() -> Path:
    """Return the cache folder: ``$PATHLENGTH_CACHE`` when set, else ``~/.cache/pathlength``."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "pathlength"


def prepare_images(images: Tensor, resolution: int = INPUT_RESOLUTION) -> Tensor:
    """Convert images [B, C, H, W] in [-1, 1] to grayscale [B, 1, resolution, resolution] in float32.

    RGB (C = 3) becomes the mean of its channels; other sizes are resized with bilinear interpolation
    (antialiased when shrinking), the way the bundled digits were resized.

    Raises:
        ValueError: when images are not [B, C, H, W] with C of 1 or 3.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [B, C, H, W] with C of 1 or 3, got {tuple(images.shape)}")

    images = images.float()
    if images.shape[1] == 3:
        images = images.mean(dim=1, keepdim=True)
    if images.shape[-2:] != (resolution, resolution):
        shrinking = images.shape[-1] > resolution or images.shape[-2] > resolution
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrinking)
    return images


class DigitsClassifier(nn.Module):
    """Two convolution stages and a hidden layer of ``FEATURE_DIM`` units, for 8x8 grayscale digits.

    ``forward`` returns logits [B, 10]. ``features`` returns the hidden layer [B, 64], which the
    Frechet distance uses. ``feature_maps`` returns the activations of both convolution stages and
    the hidden layer, which `FeatureDistance` compares. Inputs are images [B, C, H, W] in [-1, 1] of
    any size with 1 or 3 channels (see `prepare_images`).

    ``heldout_accuracy`` is the accuracy on the 20% of the digits that training did not see, or None
    for an untrained model.

    Example:
        >>> classifier = DigitsClassifier()
        >>> classifier(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * (INPUT_RESOLUTION // 4) ** 2, FEATURE_DIM)
        self.output = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.heldout_accuracy: float | None = None

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """Return [conv1 [B, 16, 4, 4], conv2 [B, 32, 2, 2], hidden [B, 64, 1, 1]] activations."""
        x = prepare_images(images).to(self.conv1.weight.dtype)
        first = F.max_pool2d(F.relu(self.conv1(x)), 2)
        second = F.max_pool2d(F.relu(self.conv2(first)), 2)
        hidden = F.relu(self.hidden(second.flatten(1)))
        return [first, second, hidden[:, :, None, None]]

    def features(self, images: Tensor) -> Tensor:
        """Return the hidden-layer features [B, FEATURE_DIM]."""
        return self.feature_maps(images)[-1].flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        return self.output(self.features(images))


def train_digits_classifier(seed: int = 0, epochs: int = 20, batch_size: int = 64) -> DigitsClassifier:
    """Train a `DigitsClassifier` on 80% of the bundled digits and measure it on the other 20%.

    The split, the initialisation and the batch order all come from ``seed``; the global RNG is left
    untouched. Training uses Adam (learning rate 3e-3) on one CPU thread in float32, at the digits'
    native 8x8 resolution, and takes a few seconds.

    Returns:
        The classifier in eval mode with ``heldout_accuracy`` set and gradients off.

    Example:
        >>> classifier = train_digits_classifier(seed=0)
        >>> classifier.heldout_accuracy > 0.9
        True
    """
    # Imported here because the data package loads scikit-learn, which only training needs.
    from pathlength.data import load_dataset

    dataset = load_dataset("digits", INPUT_RESOLUTION, channels=1)
    images, labels = dataset.get_batch(torch.arange(len(dataset)))

    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=rng)
    num_heldout = int(round(HELDOUT_FRACTION * len(dataset)))
    heldout, train = order[:num_heldout], order[num_heldout:]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DigitsClassifier()

    # One thread keeps the result independent of the machine's thread count; for a model this small
    # it is not slower than several.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        _fit(classifier, images[train], labels[train], epochs, batch_size, rng)
    finally:
        torch.set_num_threads(threads)

    classifier.eval().requires_grad_(False)
    with torch.no_grad():
        predictions = classifier(images[heldout]).argmax(dim=1)
    classifier.heldout_accuracy = float((predictions == labels[heldout]).float().mean())
    logger.info(
        "Trained the digits classifier in %.1f s: held-out accuracy %.4f on %d images",
        time.perf_counter() - started,
        classifier.heldout_accuracy,
        num_heldout,
    )
    return classifier


def _fit(classifier: DigitsClassifier, images: Tensor, labels: Tensor, epochs: int, batch_size: int, rng: torch.Generator) -> None:
    optimizer = torch.optim.Adam(classifier.parameters(), lr=3e-3)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(labels.numel(), generator=rng)
        for start in range(0, order.numel(), batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(classifier(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def classifier_path(seed: int = 0, folder: Path | None = None) -> Path:
    """Return the cache file of the classifier trained with ``seed``."""
    folder = cache_dir() if folder is None else Path(folder)
    return folder / f"digits_classifier_v{FORMAT_VERSION}_seed{seed}.safetensors"


def load_digits_classifier(seed: int = 0, folder: Path | str | None = None, retrain: bool = False) -> DigitsClassifier:
    """Load the cached digits classifier, or train it and cache it.

    The weights live in ``classifier_path(seed, folder)`` (folder defaults to `cache_dir`) as
    safetensors with the held-out accuracy in the metadata. The file is written to a temporary file
    in the same folder and renamed, so a crash never leaves a partial file under the final name. A
    file that cannot be read or has other keys is logged, retrained and replaced.

    Args:
        seed: training seed; each seed has its own cache file.
        folder: cache folder; None uses `cache_dir`.
        retrain: train and overwrite even when a cache file exists.

    Example:
        >>> classifier = load_digits_classifier()
        >>> classifier.heldout_accuracy > 0.9
        True
    """
    path = classifier_path(seed, None if folder is None else Path(folder))
    if path.exists() and not retrain:
        classifier = _read_classifier(path)
        if classifier is not None:
            return classifier

    classifier = train_digits_classifier(seed)
    _write_classifier(classifier, path)
    return classifier


def _read_classifier(path: Path) -> DigitsClassifier | None:
    try:
        state = load_file(path)
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        classifier = DigitsClassifier()
        classifier.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        logger.warning("Could not read the cached digits classifier %s (%s); training a new one", path, error)
        return None

    accuracy = metadata.get("heldout_accuracy", "None")
    classifier.heldout_accuracy = None if accuracy == "None" else float(accuracy)
    return classifier.eval().requires_grad_(False)


def _write_classifier(classifier: DigitsClassifier, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in classifier.state_dict().items()}
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "heldout_accuracy": repr(classifier.heldout_accuracy),
        "input_resolution": str(INPUT_RESOLUTION),
        "torch_version": torch.__version__,
    }

    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(state, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("Cached the digits classifier at %s", path)
