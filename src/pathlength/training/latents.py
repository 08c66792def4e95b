"""Latents, labels and style mixing for the generator phases, drawn from one seeded `torch.Generator`
so a resumed run repeats the draws of an uninterrupted one."""

from __future__ import annotations

import torch
from torch import Tensor

from pathlength.models import Generator


class LatentSampler:
    """Draw latents z ~ N(0, I), conditioning labels and style-mixing cutoffs for the generator.

    Every draw comes from ``self.generator``, a CPU ``torch.Generator``, and moves to ``device``
    afterwards, so the sequence of draws is the same on every device and its state can be saved
    with ``get_state()`` and restored with ``set_state()``.

    Args:
        z_dim: latent size.
        device: where the drawn tensors go.
        seed: seed of the generator.
        labels: int64 [N] class labels of the dataset, or None for an unconditional model. Fake
            labels are drawn from this empirical distribution, so class frequencies match the data.
        num_classes: size of the one-hot labels c; 0 for an unconditional model.

    Example:
        >>> sampler = LatentSampler(z_dim=8, device="cpu", seed=0)
        >>> z, c = sampler.sample(4)
        >>> z.shape, c
        (torch.Size([4, 8]), None)
    """

    def __init__(
        self,
        z_dim: int,
        device: torch.device | str,
        seed: int,
        labels: Tensor | None = None,
        num_classes: int = 0,
    ) -> None:
        if num_classes > 0 and (labels is None or labels.numel() == 0):
            raise ValueError(f"a conditional sampler with num_classes={num_classes} needs the dataset labels, got none")
        self.z_dim = z_dim
        self.device = torch.device(device)
        self.labels = labels.cpu() if labels is not None and num_classes > 0 else None
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """Return z float32 [batch_size, z_dim] and one-hot labels c float32 [batch_size, num_classes] or None."""
        z = self.sample_z(batch_size)
        c = None
        if self.labels is not None:
            indices = torch.randint(len(self.labels), (batch_size,), generator=self.generator)
            c = one_hot(self.labels[indices], self.num_classes).to(self.device)
        return z, c

    def sample_z(self, batch_size: int) -> Tensor:
        """Return latents z float32 [batch_size, z_dim] drawn from N(0, I)."""
        return torch.randn(batch_size, self.z_dim, generator=self.generator).to(self.device)

    def mixing_cutoff(self, num_ws: int, probability: float) -> int:
        """Return the first layer that takes the second latent's styles, or num_ws for no mixing.

        With ``probability`` the cutoff is uniform in [1, num_ws - 1], so both latents control at
        least one layer. Both random numbers are drawn on every call, so the generator's sequence
        does not depend on the outcome.
        """
        mix = torch.rand((), generator=self.generator).item() < probability
        cutoff = int(torch.randint(1, max(num_ws, 2), (), generator=self.generator))
        if not mix or num_ws < 2:
            return num_ws
        return cutoff

    def state_dict(self) -> dict[str, Tensor]:
        """Return the generator state (a uint8 tensor) for a checkpoint."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the generator state saved by ``state_dict``."""
        self.generator.set_state(state["generator"])


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """Return float32 one-hot rows [B, num_classes] for int64 class indices [B]."""
    return torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)


def map_with_style_mixing(
    generator: Generator,
    sampler: LatentSampler,
    z: Tensor,
    c: Tensor | None,
    style_mixing_prob: float,
    update_w_avg: bool = False,
) -> Tensor:
    """Map z to ws [B, num_ws, w_dim] and, with probability ``style_mixing_prob``, mix in a second latent.

    Style mixing regularization: the layers from a random cutoff on take their styles from the
    mapping of a second latent z2 (same labels), so the generator cannot assume that neighbouring
    layers' styles are correlated. The cutoff is shared by the batch.
    """
    ws = generator.mapping(z, c, update_w_avg=update_w_avg)
    cutoff = sampler.mixing_cutoff(generator.num_ws, style_mixing_prob)
    if cutoff >= generator.num_ws:
        return ws

    z_mix = sampler.sample_z(z.shape[0])
    ws_mix = generator.mapping(z_mix, c)
    return torch.cat([ws[:, :cutoff], ws_mix[:, cutoff:]], dim=1)
