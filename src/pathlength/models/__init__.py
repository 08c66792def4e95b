"""Reference StyleGAN2 networks that the pathlength trainer, diagnostics and benchmarks build on."""

from pathlength.models.layers import shifted_sum_forms
from pathlength.models.stylegan2 import (
    Discriminator,
    Generator,
    MappingNetwork,
    SynthesisNetwork,
)

__all__ = ["Discriminator", "Generator", "MappingNetwork", "SynthesisNetwork", "shifted_sum_forms"]
