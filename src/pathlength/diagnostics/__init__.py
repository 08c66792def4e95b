"""Diagnostics that show what path length regularization did to a generator: the distribution of the
training statistic, the exact Jacobian, perceptual path length, image distances, a Frechet distance
on the bundled digits, and projection of images into the latent space."""

from pathlength.diagnostics.classifier import (
    DigitsClassifier,
    cache_dir,
    load_digits_classifier,
    prepare_images,
    train_digits_classifier,
)
from pathlength.diagnostics.distances import Distance, FeatureDistance, LPIPSDistance, PixelDistance
from pathlength.diagnostics.frechet import (
    FrechetDistanceResult,
    classifier_frechet_distance,
    frechet_distance,
    frechet_distance_from_statistics,
)
from pathlength.diagnostics.jacobian import JacobianSpectrum, JacobianTooLargeError, jacobian_spectrum
from pathlength.diagnostics.ppl import PerceptualPathLengthResult, lerp, perceptual_path_length, slerp
from pathlength.diagnostics.projection import ProjectionResult, project, psnr
from pathlength.diagnostics.protocol import GeneratorLike
from pathlength.diagnostics.statistics import PathLengthStatistics, path_length_statistics, summarize_lengths

__all__ = [
    "DigitsClassifier",
    "Distance",
    "FeatureDistance",
    "FrechetDistanceResult",
    "GeneratorLike",
    "JacobianSpectrum",
    "JacobianTooLargeError",
    "LPIPSDistance",
    "PathLengthStatistics",
    "PerceptualPathLengthResult",
    "PixelDistance",
    "ProjectionResult",
    "cache_dir",
    "classifier_frechet_distance",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "jacobian_spectrum",
    "lerp",
    "load_digits_classifier",
    "path_length_statistics",
    "perceptual_path_length",
    "prepare_images",
    "project",
    "psnr",
    "slerp",
    "summarize_lengths",
    "train_digits_classifier",
]
