"""A small Fourier neural operator (Li et al., 2021) for 2-D Darcy flow: permeability k -> pressure u.

It lives in an importable module (`external.models`), not in the training script, so a checkpoint
names its class as `external.models:FNO2d` and any process that can import the project rebuilds it
(CheckpointCacher, an evaluation stage on another device, a notebook). Every constructor argument is
a plain number, so checkpoints carry them as JSON. The input normalisation is part of the model:
it takes physical k and returns physical u, at any resolution (the spectral layers are
resolution-independent; padding is a fraction of the grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpectralConv2d(nn.Module):
    """Multiply the lowest `modes` x `modes` Fourier modes (both signs along the first axis) by
    learned complex weights. Weights are stored as real (..., 2) tensors: every optimizer, DDP
    backend and checkpoint format handles those."""

    def __init__(self, in_channels: int, out_channels: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (in_channels * out_channels)
        self.weight_pos = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes, modes, 2))
        self.weight_neg = nn.Parameter(scale * torch.rand(in_channels, out_channels, modes, modes, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # FFTs in float32 even under autocast: half-precision FFTs need power-of-two sizes
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            b, _, h, w = x.shape
            m1, m2 = min(self.modes, h // 2), min(self.modes, w // 2 + 1)
            x_ft = torch.fft.rfft2(x)
            out = torch.zeros(b, self.weight_pos.shape[1], h, w // 2 + 1, dtype=torch.cfloat, device=x.device)
            w_pos = torch.view_as_complex(self.weight_pos)[:, :, :m1, :m2]
            w_neg = torch.view_as_complex(self.weight_neg)[:, :, :m1, :m2]
            out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m1, :m2], w_pos)
            out[:, :, -m1:, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m1:, :m2], w_neg)
            return torch.fft.irfft2(out, s=(h, w))


class FNO2d(nn.Module):
    """k (batch, N, N) -> u (batch, N, N). `width` channels, `modes` Fourier modes per axis,
    `layers` Fourier layers; `k_mean/k_std/u_mean/u_std` are the training set's statistics."""

    def __init__(self, width: int = 24, modes: int = 8, layers: int = 4, padding: float = 0.125,
                 k_mean: float = 0.0, k_std: float = 1.0, u_mean: float = 0.0, u_std: float = 1.0):
        super().__init__()
        self.width, self.modes, self.layers, self.padding = width, modes, layers, padding
        self.register_buffer("stats", torch.tensor([k_mean, k_std, u_mean, u_std], dtype=torch.float32))
        self.lift = nn.Conv2d(3, width, 1)  # k and the (x, y) coordinates
        self.spectral = nn.ModuleList(SpectralConv2d(width, width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(), nn.Conv2d(2 * width, 1, 1))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        k_mean, k_std, u_mean, u_std = self.stats
        b, n, _ = k.shape
        x = ((k - k_mean) / k_std).unsqueeze(1)
        grid = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=k.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(grid, grid, indexing="ij")
        x = torch.cat([x, gx.expand(b, 1, n, n), gy.expand(b, 1, n, n)], dim=1)
        x = self.lift(x)
        pad = max(1, round(self.padding * n))  # the solution is not periodic: pad, then crop
        x = F.pad(x, (0, pad, 0, pad))
        for i, (spectral, pointwise) in enumerate(zip(self.spectral, self.pointwise)):
            x = spectral(x) + pointwise(x)
            if i < self.layers - 1:
                x = F.gelu(x)
        x = x[..., :n, :n]
        return self.project(x).squeeze(1) * u_std + u_mean


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ||pred - target|| / ||target|| over the grid: the usual operator-learning error."""
    diff = (pred - target).flatten(1).norm(dim=1)
    return diff / target.flatten(1).norm(dim=1).clamp_min(1e-12)
