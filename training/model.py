"""A compact CNN over normalised log-mel: (batch, views * n_mels, frames) -> (batch, n_classes) logits.

Four conv stages (3x3 convs, batch norm, ReLU; 2x2 max-pool after the first three) then mean
over mel bands and mean + standard deviation over time, so any length of at least 8
frames works and the exported ONNX graph has dynamic batch and frame axes.
About 0.28 M parameters and ~0.05 GMAC per second of audio at a 10 ms hop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (stored in the card under ``architecture``)."""

    n_mels: int = 64
    views: int = 1
    """Normalised views of the log-mel stacked along the input's band axis
    (:attr:`worker.features.FeatureConfig.n_views`); each becomes an input channel."""
    n_classes: int = 7
    channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    dropout: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class EmotionCNN(nn.Module):
    """Log-mel CNN with statistics pooling over time."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        c1, c2, c3, c4 = config.channels
        self.config = config
        # Single convs at the two full-resolution stages keep the cost per audio-second
        # low (most multiply-adds of a 2-D CNN are spent where the map is largest).
        self.body = nn.Sequential(
            *_conv_bn(config.views, c1), nn.MaxPool2d(2),
            *_conv_bn(c1, c2), nn.MaxPool2d(2),
            *_conv_bn(c2, c3), *_conv_bn(c3, c3), nn.MaxPool2d(2),
            *_conv_bn(c3, c4), *_conv_bn(c4, c4),
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * c4, config.n_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, views * n_mels, frames) float32 -> (batch, n_classes) logits."""
        c = self.config
        # the views stacked along the band axis become channels: (B, views, n_mels, frames);
        # one view keeps the Unsqueeze graph emotion-v1.4.0 and earlier were exported with
        x = (features.unsqueeze(1) if c.views == 1 else
             features.reshape(features.shape[0], c.views, c.n_mels, features.shape[2]))
        h = self.body(x)                           # (B, C, mels/8, frames/8)
        h = h.mean(dim=2)                          # (B, C, T')
        mean = h.mean(dim=2)
        std = torch.sqrt(torch.clamp(h.var(dim=2, unbiased=False), min=1e-6))
        out: torch.Tensor = self.head(torch.cat([mean, std], dim=1))
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
