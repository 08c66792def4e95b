"""Frechet distance between two sets of features, and between real and generated images in the
feature space of the bundled digits classifier. The numbers are not comparable with Inception FID."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pathlength.diagnostics.classifier import DigitsClassifier, load_digits_classifier
from pathlength.diagnostics.protocol import (
    GeneratorLike,
    batch_slices,
    check_generator,
    check_noise_mode,
    check_positive_int,
    draw_labels,
    module_device_dtype,
    run_mapping,
    run_synthesis,
    seeded_global_rng,
)

logger = logging.getLogger(__name__)

METHODS = ("auto", "scipy", "eigh")

# Added to both covariances' diagonals when scipy's square root of their product is singular or not finite.
_SQRTM_OFFSET = 1e-6


@dataclass(frozen=True)
class FrechetDistanceResult:
    """Frechet distance between real and generated images in the digits classifier's feature space.

    Attributes:
        value: the distance (float, >= 0 up to rounding).
        num_real, num_generated: images behind each set of statistics.
        feature_dim: size of the feature vectors.
        classifier_heldout_accuracy: held-out accuracy of the classifier that made the features.
        settings: seed, noise_mode, truncation_psi, method.
    """

    value: float
    num_real: int
    num_generated: int
    feature_dim: int
    classifier_heldout_accuracy: float | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return {
            "frechet_distance": self.value,
            "num_real": self.num_real,
            "num_generated": self.num_generated,
            "feature_dim": self.feature_dim,
            "classifier_heldout_accuracy": self.classifier_heldout_accuracy,
            "settings": dict(self.settings),
        }


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray, method: str = "auto") -> float:
    r"""Frechet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D].

    .. math:: d^2 = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{Tr}(\Sigma_a + \Sigma_b - 2 (\Sigma_a \Sigma_b)^{1/2})

    with sample means and unbiased covariances (ddof=1), computed in float64. See
    `frechet_distance_from_statistics` for the matrix square root.

    Raises:
        ValueError: when a set has fewer than 2 rows, the feature sizes differ, or a value is not finite.

    Example:
        >>> features = torch.randn(500, 8)
        >>> round(frechet_distance(features, features + 1.0), 6)
        8.0
    """
    mean_a, covariance_a = _statistics(features_a, "features_a")
    mean_b, covariance_b = _statistics(features_b, "features_b")
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"the feature sets must have the same feature size, got {mean_a.shape[0]} and {mean_b.shape[0]}")
    return frechet_distance_from_statistics(mean_a, covariance_a, mean_b, covariance_b, method=method)


def frechet_distance_from_statistics(
    mean_a: np.ndarray,
    covariance_a: np.ndarray,
    mean_b: np.ndarray,
    covariance_b: np.ndarray,
    method: str = "auto",
) -> float:
    """Frechet distance between N(mean_a, covariance_a) and N(mean_b, covariance_b), in float64.

    The trace of (covariance_a covariance_b)^(1/2) is computed by

    * ``"scipy"``: ``scipy.linalg.sqrtm`` of the product. When scipy reports the product singular or
      the result is not finite, 1e-6 is added to both diagonals and it is retried. A small imaginary
      part from rounding is dropped.
    * ``"eigh"``: with S = covariance_a^(1/2) from a symmetric eigendecomposition, the eigenvalues of
      the symmetric matrix S covariance_b S, whose square roots sum to the same trace. This needs only
      symmetric eigendecompositions, so it is stable for singular covariances (for example features
      with dead ReLU units, or fewer samples than features).
    * ``"auto"``: scipy when it is installed, else eigh; eigh also when scipy finds the product singular.

    Raises:
        ValueError: on an unknown method, mismatched shapes, or a large imaginary part from scipy.

    Example:
        >>> identity = np.eye(3)
        >>> frechet_distance_from_statistics(np.zeros(3), identity, np.ones(3), 4 * identity)
        6.0
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mean_a, mean_b = np.asarray(mean_a, dtype=np.float64), np.asarray(mean_b, dtype=np.float64)
    covariance_a = np.atleast_2d(np.asarray(covariance_a, dtype=np.float64))
    covariance_b = np.atleast_2d(np.asarray(covariance_b, dtype=np.float64))
    dim = mean_a.shape[0]
    if mean_b.shape != (dim,) or covariance_a.shape != (dim, dim) or covariance_b.shape != (dim, dim):
        raise ValueError(
            f"statistics must be means [D] and covariances [D, D] of one size, got {mean_a.shape}, "
            f"{covariance_a.shape}, {mean_b.shape}, {covariance_b.shape}"
        )

    if method == "eigh" or (method == "auto" and not _scipy_available()):
        trace_sqrt = _trace_sqrt_eigh(covariance_a, covariance_b)
    else:
        trace_sqrt, singular = _trace_sqrt_scipy(covariance_a, covariance_b)
        if singular and method == "auto":
            logger.debug("The covariance product is singular; using the eigh square root")
            trace_sqrt = _trace_sqrt_eigh(covariance_a, covariance_b)
        elif singular:
            logger.warning("The covariance product is singular; adding %g to both diagonals for scipy's sqrtm", _SQRTM_OFFSET)
            offset = np.eye(dim) * _SQRTM_OFFSET
            trace_sqrt, _ = _trace_sqrt_scipy(covariance_a + offset, covariance_b + offset)

    difference = mean_a - mean_b
    value = float(difference @ difference + np.trace(covariance_a) + np.trace(covariance_b) - 2 * trace_sqrt)
    # Rounding can leave a tiny negative value for identical statistics.
    return max(value, 0.0)


def classifier_frechet_distance(
    generator: GeneratorLike,
    dataset: Any,
    num: int = 2000,
    *,
    num_real: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    classifier: DigitsClassifier | None = None,
    truncation_psi: float = 1.0,
    noise_mode: str | None = "random",
    method: str = "auto",
) -> FrechetDistanceResult:
    """Frechet distance between real and generated images in the digits classifier's feature space.

    Features are the classifier's 64 hidden units (`DigitsClassifier.features`); images of any size
    with 1 or 3 channels are converted to 8x8 grayscale first. The classifier was trained on the
    bundled digits, so the distance is meaningful for digit-like data only. It is not Inception FID:
    the network, the feature size and the image size all differ. The numbers are comparable only
    with other numbers from this function with the same classifier seed and similar counts, because
    the estimate is biased upwards for small counts.

    Args:
        generator: a `GeneratorLike`.
        dataset: the real images, an ``ImageDataset`` (its ``get_batch``) or a float tensor
            [N, C, H, W] in [-1, 1].
        num: generated images.
        num_real: real images, drawn without replacement with ``seed``; None uses all of them.
        batch_size: images per forward pass.
        seed: seed of the latents, labels and the real subset.
        classifier: a `DigitsClassifier`; None uses `load_digits_classifier()`.
        truncation_psi: passed to the mapping network when not 1.
        noise_mode: passed to the synthesis network ("random", as in sampling); None passes nothing.
        method: matrix square root method of `frechet_distance_from_statistics`.

    Example:
        >>> from pathlength.data import load_dataset
        >>> result = classifier_frechet_distance(generator, load_dataset("digits", 16), num=500)  # doctest: +SKIP
        >>> result.to_dict()["frechet_distance"] >= 0  # doctest: +SKIP
        True
    """
    check_generator(generator)
    num = check_positive_int("num", num)
    batch_size = check_positive_int("batch_size", batch_size)
    check_noise_mode(noise_mode)
    classifier = load_digits_classifier() if classifier is None else classifier
    device, dtype = module_device_dtype(generator)
    classifier = classifier.to(device)

    rng = torch.Generator().manual_seed(seed)
    real_images, class_pool = _real_images(dataset, num_real, rng)
    real_features = _features(classifier, real_images, batch_size, device)

    z = torch.randn(num, generator.z_dim, generator=rng)
    labels = draw_labels(generator, num, rng, class_pool=class_pool)
    generated = []
    with torch.no_grad(), seeded_global_rng(seed, device):
        for part in batch_slices(num, batch_size):
            batch_labels = labels[part].to(device=device, dtype=dtype) if labels is not None else None
            ws = run_mapping(generator, z[part].to(device=device, dtype=dtype), batch_labels, truncation_psi)
            images = run_synthesis(generator, ws, noise_mode)
            generated.append(classifier.features(images.clamp(-1, 1)).double().cpu())

    value = frechet_distance(real_features, torch.cat(generated), method=method)
    return FrechetDistanceResult(
        value=value,
        num_real=int(real_features.shape[0]),
        num_generated=num,
        feature_dim=int(real_features.shape[1]),
        classifier_heldout_accuracy=classifier.heldout_accuracy,
        settings={"seed": seed, "noise_mode": noise_mode, "truncation_psi": truncation_psi, "method": method},
    )


def _statistics(features: Tensor | np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(features, Tensor):
        features = features.detach().cpu().double().numpy()
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"{name} must have shape [N, D] with N >= 2, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or inf")
    return values.mean(axis=0), np.atleast_2d(np.cov(values, rowvar=False))


def _scipy_available() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def _trace_sqrt_scipy(covariance_a: np.ndarray, covariance_b: np.ndarray) -> tuple[float, bool]:
    # Returns the trace and whether scipy found the product singular (its result may then be inaccurate).
    from scipy.linalg import LinAlgWarning, sqrtm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LinAlgWarning)
        root = sqrtm(covariance_a @ covariance_b)
    singular = any(issubclass(warning.category, LinAlgWarning) for warning in caught) or not np.isfinite(root).all()

    if np.iscomplexobj(root):
        imaginary = np.abs(root.imag).max()
        if imaginary > 1e-3 * max(1.0, np.abs(root.real).max()):
            raise ValueError(
                f"the square root of the covariance product has an imaginary part of {imaginary:.3g}; "
                "the covariances are not positive semi-definite, or pass method='eigh'"
            )
        root = root.real
    return float(np.trace(root)), singular


def _trace_sqrt_eigh(covariance_a: np.ndarray, covariance_b: np.ndarray) -> float:
    root_a = _symmetric_sqrt(covariance_a)
    middle = root_a @ covariance_b @ root_a
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    # Rounding can make eigenvalues of a positive semi-definite matrix slightly negative.
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def _real_images(dataset: Any, num_real: int | None, rng: torch.Generator) -> tuple[Tensor, Tensor | None]:
    if isinstance(dataset, Tensor):
        images, class_pool = dataset, None
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"real images must be a float tensor [N, C, H, W] in [-1, 1], got {images.dtype} {tuple(images.shape)}")
        count = images.shape[0]
    elif hasattr(dataset, "get_batch"):
        count = len(dataset)
        images, class_pool = None, getattr(dataset, "labels", None)
    else:
        raise ValueError(f"dataset must be an ImageDataset or a float tensor [N, C, H, W], got {type(dataset).__name__}")

    if num_real is None:
        indices = torch.arange(count)
    else:
        num_real = check_positive_int("num_real", num_real)
        if num_real > count:
            raise ValueError(f"num_real is {num_real} but the dataset contains only {count} images; pass num_real <= {count} or None")
        indices = torch.randperm(count, generator=rng)[:num_real]

    if images is None:
        images, _ = dataset.get_batch(indices)
    else:
        images = images[indices]
    return images, class_pool


def _features(classifier: DigitsClassifier, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    features = []
    with torch.no_grad():
        for part in batch_slices(images.shape[0], batch_size):
            features.append(classifier.features(images[part].to(device)).double().cpu())
    return torch.cat(features)
