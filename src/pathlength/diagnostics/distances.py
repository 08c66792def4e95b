"""Image distances for perceptual path length and projection: pixels, features of the bundled digits
classifier, and LPIPS from weights the user already has on disk.

A distance maps two batches of images [B, C, H, W] in [-1, 1] to one value per pair [B]. Values
depend entirely on the distance, so numbers measured with different distances are not comparable.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from pathlength.diagnostics.classifier import DigitsClassifier, load_digits_classifier

logger = logging.getLogger(__name__)

# Added to squared norms inside the square root, so a location where every channel is 0 still has a
# finite gradient. The change to the unit-normalised features of normal activations is negligible.
NORMALIZE_EPS = 1e-10


@runtime_checkable
class Distance(Protocol):
    """A distance between image pairs: ``distance(images_a, images_b) -> [B]``.

    Both inputs are [B, C, H, W] in [-1, 1] with the same shape. The result is non-negative, 0 for
    identical images, and differentiable when the inputs are.
    """

    def __call__(self, images_a: Tensor, images_b: Tensor) -> Tensor: ...


def check_pair(images_a: Tensor, images_b: Tensor) -> None:
    """Raise ValueError unless both batches are [B, C, H, W] of the same shape."""
    if images_a.ndim != 4 or images_a.shape != images_b.shape:
        raise ValueError(
            f"a distance needs two image batches [B, C, H, W] of the same shape, got {tuple(images_a.shape)} "
            f"and {tuple(images_b.shape)}"
        )


def unit_normalize(features: Tensor) -> Tensor:
    """Divide activations [B, C, H, W] by their L2 norm over channels at each location (safe at 0)."""
    return features * torch.rsqrt(features.square().sum(dim=1, keepdim=True) + NORMALIZE_EPS)


class PixelDistance:
    """Mean squared difference of pixels, ``mean over C, H, W of (a - b)^2``, in the images' dtype.

    Example:
        >>> PixelDistance()(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
        tensor([1., 1.])
    """

    name = "pixel"

    def __call__(self, images_a: Tensor, images_b: Tensor) -> Tensor:
        check_pair(images_a, images_b)
        return (images_a - images_b).square().flatten(1).mean(dim=1)

    def __repr__(self) -> str:
        return "PixelDistance()"


class FeatureDistance(nn.Module):
    r"""Distance in the feature space of the bundled digits classifier, in the way LPIPS uses VGG.

    For each of the classifier's three feature maps f_k (two convolution stages and the hidden
    layer, see `DigitsClassifier.feature_maps`):

    .. math:: d(a, b) = \sum_k \operatorname{mean}_{h, w} \sum_c (\hat f_k(a) - \hat f_k(b))^2

    where :math:`\hat f` is unit-normalised over channels. Images of any size with 1 or 3 channels
    are converted to 8x8 grayscale first. The classifier is trained on handwritten digits, so the
    distance is meaningful for digit-like images; its values are not LPIPS values.

    Args:
        classifier: a `DigitsClassifier`; None loads (or trains and caches) the default one with
            `load_digits_classifier`.

    Example:
        >>> distance = FeatureDistance()
        >>> distance(torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
        tensor([0., 0.])
    """

    name = "feature"

    def __init__(self, classifier: DigitsClassifier | None = None) -> None:
        super().__init__()
        self.classifier = load_digits_classifier() if classifier is None else classifier
        self.classifier.eval().requires_grad_(False)

    def forward(self, images_a: Tensor, images_b: Tensor) -> Tensor:
        check_pair(images_a, images_b)
        maps_a = self.classifier.feature_maps(images_a)
        maps_b = self.classifier.feature_maps(images_b)

        total = torch.zeros(images_a.shape[0], dtype=maps_a[0].dtype, device=maps_a[0].device)
        for feature_a, feature_b in zip(maps_a, maps_b):
            difference = (unit_normalize(feature_a) - unit_normalize(feature_b)).square().sum(dim=1)
            total = total + difference.flatten(1).mean(dim=1)
        return total


# VGG16's convolution layers by their index in torchvision's ``vgg16().features`` (ReLU after each,
# max pooling at 4, 9, 16, 23 and 30), and the five ReLU outputs that LPIPS compares.
VGG16_CONVOLUTIONS = {
    0: (3, 64), 2: (64, 64),
    5: (64, 128), 7: (128, 128),
    10: (128, 256), 12: (256, 256), 14: (256, 256),
    17: (256, 512), 19: (512, 512), 21: (512, 512),
    24: (512, 512), 26: (512, 512), 28: (512, 512),
}  # fmt: skip
VGG16_POOLS = (4, 9, 16, 23)
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's fixed input normalisation for images in [-1, 1]: x <- (x - shift) / scale per RGB channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

_CONV_KEY = re.compile(r"^(?:features|net\.slice\d+)\.(\d+)\.(weight|bias)$")
_LINEAR_KEY = re.compile(r"^lin(\d+)\.(?:model\.\d+\.)?weight$")


class LPIPSDistance(nn.Module):
    r"""LPIPS distance (Zhang et al., CVPR 2018) on a VGG16 feature stack built in plain torch.

    .. math:: d(a, b) = \sum_{k=1}^{5} \operatorname{mean}_{h, w} \sum_c w_{k,c} (\hat f_k(a) - \hat f_k(b))^2

    where f_k are VGG16's relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 activations, :math:`\hat f`
    is unit-normalised over channels and w_k are LPIPS's learned non-negative channel weights. Without
    those weights every w_{k,c} is 1, which is the plain VGG16 feature distance, not calibrated LPIPS.

    Grayscale inputs are repeated to RGB. Images smaller than ``min_resolution`` are upsampled
    (bilinear) so the deepest layer keeps at least 2x2 pixels, and images larger than
    ``max_resolution`` are downsampled (area). No weights are downloaded: load them with
    :meth:`from_file`. Values depend on the weights and the resizing, and are comparable only with
    numbers from the same distance.

    Example:
        >>> distance = LPIPSDistance.from_file("vgg16_lpips.safetensors")  # doctest: +SKIP
        >>> distance(images_a, images_b).shape  # doctest: +SKIP
        torch.Size([8])
    """

    name = "lpips"

    def __init__(self, min_resolution: int = 32, max_resolution: int = 256) -> None:
        super().__init__()
        self.min_resolution = min_resolution
        self.max_resolution = max_resolution

        layers: list[nn.Module] = []
        for index in range(max(VGG16_CONVOLUTIONS) + 2):
            if index in VGG16_CONVOLUTIONS:
                in_channels, out_channels = VGG16_CONVOLUTIONS[index]
                layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            elif index in VGG16_POOLS:
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.linear = nn.ParameterList(nn.Parameter(torch.ones(channels)) for channels in LPIPS_TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1))
        self.has_linear_weights = False
        self.requires_grad_(False)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        linear_path: str | os.PathLike | None = None,
        min_resolution: int = 32,
        max_resolution: int = 256,
    ) -> "LPIPSDistance":
        """Build the distance from VGG16 (and optionally LPIPS) weights in local files.

        Accepted key names: torchvision's ``vgg16`` state dict (``features.0.weight`` ...,
        ``classifier.*`` ignored) or the ``lpips`` package's full model (``net.slice1.0.weight`` ...),
        and LPIPS's channel weights ``lin0.model.1.weight`` ... ``lin4.model.1.weight`` either in the
        same file or in ``linear_path``. A ``.safetensors`` file is read with safetensors; any other
        file with ``torch.load(weights_only=True)``, which loads tensors without running pickled code.

        Raises:
            FileNotFoundError: when a file does not exist.
            ValueError: when a file cannot be read as a state dict, VGG16 keys are missing, only some
                LPIPS channel weights are present, or a tensor has the wrong shape.
        """
        state = _read_state_dict(Path(path))
        if linear_path is not None:
            state.update(_read_state_dict(Path(linear_path)))

        distance = cls(min_resolution=min_resolution, max_resolution=max_resolution)
        distance._load_weights(state, Path(path))
        return distance

    def _load_weights(self, state: dict[str, Tensor], source: Path) -> None:
        convolutions: dict[str, Tensor] = {}
        linear: dict[int, Tensor] = {}
        for key, tensor in state.items():
            key = key.removeprefix("module.")
            if match := _CONV_KEY.match(key):
                convolutions[f"{match.group(1)}.{match.group(2)}"] = tensor
            elif match := _LINEAR_KEY.match(key):
                linear[int(match.group(1))] = tensor

        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(convolutions), key=lambda name: (int(name.split(".")[0]), name.endswith("bias")))
        if missing:
            found = ", ".join(sorted(state)[:5]) or "no keys"
            raise ValueError(
                f"{source} is missing VGG16 weights {', '.join('features.' + name for name in missing[:6])}"
                f"{' ...' if len(missing) > 6 else ''} ({len(missing)} of {len(expected)} missing); expected "
                f"torchvision vgg16 keys such as 'features.0.weight' or lpips keys such as "
                f"'net.slice1.0.weight', found {found}"
            )
        for name, reference in expected.items():
            if convolutions[name].shape != reference.shape:
                raise ValueError(
                    f"{source}: VGG16 weight features.{name} has shape {list(convolutions[name].shape)}, "
                    f"expected {list(reference.shape)}; the file is not a VGG16 state dict"
                )
        self.features.load_state_dict({name: convolutions[name].float() for name in expected})

        if not linear:
            logger.info("%s has no LPIPS channel weights (lin0 ... lin4); using the unweighted VGG16 distance", source)
            return
        if sorted(linear) != list(range(len(LPIPS_TAPS))):
            raise ValueError(
                f"LPIPS channel weights must be lin0 ... lin4, found lin{', lin'.join(map(str, sorted(linear)))}; "
                "pass a complete LPIPS VGG weights file as linear_path"
            )
        for index, channels in enumerate(LPIPS_TAP_CHANNELS):
            weight = linear[index]
            if weight.numel() != channels:
                raise ValueError(
                    f"LPIPS channel weight lin{index} has {weight.numel()} values, expected {channels} "
                    f"(shape [1, {channels}, 1, 1]); the weights are not for VGG16"
                )
            self.linear[index].data.copy_(weight.reshape(channels).float())
        self.has_linear_weights = True

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """Return the five tapped activations for images [B, C, H, W] in [-1, 1] (C of 1 or 3)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape [B, C, H, W] with C of 1 or 3, got {tuple(images.shape)}")

        x = images.to(self.shift.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        smallest, largest = min(x.shape[-2:]), max(x.shape[-2:])
        if smallest < self.min_resolution:
            factor = self.min_resolution / smallest
            x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        elif largest > self.max_resolution:
            factor = self.max_resolution / largest
            x = F.interpolate(x, scale_factor=factor, mode="area")
        x = (x - self.shift) / self.scale

        maps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                maps.append(x)
            if index == LPIPS_TAPS[-1]:
                break
        return maps

    def forward(self, images_a: Tensor, images_b: Tensor) -> Tensor:
        check_pair(images_a, images_b)
        maps_a = self.feature_maps(images_a)
        maps_b = self.feature_maps(images_b)

        total = torch.zeros(images_a.shape[0], dtype=maps_a[0].dtype, device=maps_a[0].device)
        for weight, feature_a, feature_b in zip(self.linear, maps_a, maps_b):
            difference = (unit_normalize(feature_a) - unit_normalize(feature_b)).square()
            weighted = (difference * weight.reshape(1, -1, 1, 1)).sum(dim=1)
            total = total + weighted.flatten(1).mean(dim=1)
        return total


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r} not found; pathlength downloads nothing, so pass the path of a "
            "VGG16 or LPIPS weights file you have (safetensors or a torch state dict)"
        )

    if path.suffix == ".safetensors":
        try:
            return dict(load_file(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"could not read {path} as safetensors: {error}") from error

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises several unrelated types for a bad file
        raise ValueError(
            f"could not read {path} as a torch state dict with weights_only=True ({type(error).__name__}: "
            f"{error}); save the weights with torch.save(model.state_dict(), path) or as safetensors"
        ) from error

    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(value, Tensor) for value in loaded.values()):
        raise ValueError(f"{path} does not contain a state dict (a mapping of names to tensors), got {type(loaded).__name__}")
    return dict(loaded)
