"""A compact CNN over normalised log-mel: (batch, views * n_mels, frames) -> (batch, n_classes) logits.

Four conv stages (3x3 convs, batch norm, ReLU; 2x2 max-pool after the first three) then mean
over mel bands and mean + standard deviation over time, so any length of at least 8
frames works and the exported ONNX graph has dynamic batch and frame axes.
About 0.28 M parameters and ~0.05 GMAC per second of audio at a 10 ms hop.

``members`` > 1 builds an ensemble of that many such CNNs (usually narrower) inside one module
and one ONNX graph: each member learns from its own loss, the exported logits are the
members' mean.

``arousal_classes`` > 0 adds an auxiliary arousal head on the same pooled statistics, trained
on corpora with arousal levels only (BAVED); it shapes the shared layers during training and
is left out of the exported graph, which still maps features to emotion logits only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import torch
from torch import nn

from worker.errors import ConfigError

BAND_POOLINGS: Final = ("mean", "keep")
"""Values of :attr:`ModelConfig.band_pooling`."""


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
    members: int = 1
    """CNNs of this shape averaged in one model; a convolution's cost grows with the product of
    its input and output channels, so four members at half the channels cost about one
    member at full width."""

    arousal_classes: int = 0
    """Outputs of the auxiliary arousal head (0: none, the graph emotion-v1.4.0 has)."""
    band_pooling: str = "keep"
    """How the last stage's ``n_mels / 8`` frequency rows reach the time statistics: "keep"
    (emotion-v1.7.0) keeps each row's channels apart, so the head sees the mean and deviation
    of every (channel, band): ``n_mels / 8`` times the inputs; "mean" averages them
    (emotion-v1.6.0 and earlier: where in the spectrum a pattern sits is lost beyond the
    receptive field)."""

    def __post_init__(self) -> None:
        if self.arousal_classes < 0:
            raise ConfigError(f"arousal_classes={self.arousal_classes}: use 0 (no arousal "
                              "head) or the number of arousal levels")
        if self.members < 1:
            raise ConfigError(f"members={self.members}: use 1 (one CNN) or more (an ensemble)")
        if self.band_pooling not in BAND_POOLINGS:
            raise ConfigError(f"band_pooling={self.band_pooling!r}: use one of "
                              f"{', '.join(BAND_POOLINGS)}")

    @property
    def embedding_size(self) -> int:
        """Width of the pooled statistics the heads read: mean and standard deviation of each
        last-stage channel, per frequency row with ``band_pooling`` "keep"."""
        rows = self.n_mels // 8 if self.band_pooling == "keep" else 1
        return 2 * self.channels[3] * rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


Outputs = tuple[torch.Tensor, torch.Tensor | None]
"""One member's training outputs: (batch, n_classes) emotion logits and (batch,
arousal_classes) arousal logits, None without an arousal head."""


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
        self.head = nn.Sequential(nn.Dropout(config.dropout),
                                  nn.Linear(config.embedding_size, config.n_classes))
        # built after the emotion layers, so their initial weights do not depend on it
        self.arousal_head = (nn.Sequential(nn.Dropout(config.dropout),
                                           nn.Linear(config.embedding_size,
                                                     config.arousal_classes))
                             if config.arousal_classes else None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, views * n_mels, frames) float32 -> (batch, n_classes) logits."""
        out: torch.Tensor = self.head(self.embed(features))
        return out

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, views * n_mels, frames) float32 -> (batch, embedding_size) mean and
        standard deviation over time of the last stage (channels first, then moments)."""
        c = self.config
        # the views stacked along the band axis become channels: (B, views, n_mels, frames);
        # one view keeps the Unsqueeze graph emotion-v1.4.0 and earlier were exported with
        x = (features.unsqueeze(1) if c.views == 1 else
             features.reshape(features.shape[0], c.views, c.n_mels, features.shape[2]))
        h = self.body(x)                           # (B, C, mels/8, frames/8)
        h = (h.mean(dim=2) if c.band_pooling == "mean"   # (B, C, T')
             else h.flatten(1, 2))                        # (B, C * mels/8, T')
        mean = h.mean(dim=2)
        std = torch.sqrt(torch.clamp(h.var(dim=2, unbiased=False), min=1e-6))
        return torch.cat([mean, std], dim=1)

    def outputs(self, features: torch.Tensor) -> Outputs:
        """Emotion and (with the head) arousal logits of one forward pass."""
        e = self.embed(features)
        return self.head(e), (None if self.arousal_head is None else self.arousal_head(e))

    def member_logits(self, inputs: Sequence[torch.Tensor]) -> list[Outputs]:
        """One member: [outputs of ``inputs[0]``]."""
        return [self.outputs(inputs[0])]

    def arousal_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, arousal_classes) logits; ValueError without an arousal head."""
        if self.arousal_head is None:
            raise ValueError("this model has no arousal head (arousal_classes=0)")
        out: torch.Tensor = self.arousal_head(self.embed(features))
        return out


class EmotionEnsemble(nn.Module):
    """``config.members`` EmotionCNNs; logits are the members' mean."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(EmotionCNN(config) for _ in range(config.members))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, views * n_mels, frames) float32 -> (batch, n_classes) mean logits."""
        return torch.stack([m(features) for m in self.members]).mean(dim=0)

    def member_logits(self, inputs: Sequence[torch.Tensor]) -> list[Outputs]:
        """Each member's outputs of its own input (one per member: members see differently
        masked copies of a batch during training)."""
        if len(inputs) != len(self.members):
            raise ValueError(f"{len(inputs)} inputs for {len(self.members)} members")
        return [m.outputs(x) for m, x in zip(self._cnns(), inputs, strict=True)]

    def arousal_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, arousal_classes) mean of the members' arousal logits."""
        return torch.stack([m.arousal_logits(features) for m in self._cnns()]).mean(dim=0)

    def _cnns(self) -> list[EmotionCNN]:
        return [m for m in self.members if isinstance(m, EmotionCNN)]


class MergedClasses(nn.Module):
    """A model trained with extra classes, served with fewer: each served class's logit is the
    log-sum-exp of the logits of the training classes it gathers, so its softmax probability
    is the sum of theirs before calibration. The card's temperature is fitted on, and divides,
    the merged logits: it calibrates the served classes, and the served probabilities are
    then no longer the sums of the training classes' tempered ones.

    ``into[j]`` is the served class of training class j (the identity for the served ones).
    """

    def __init__(self, model: nn.Module, into: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        served = max(into) + 1
        if sorted(set(into)) != list(range(served)):
            raise ValueError(f"into={list(into)} must reach every served class 0..{served - 1}")
        self.groups = [[j for j, c in enumerate(into) if c == k] for k in range(served)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, rows, frames) -> (batch, served classes) merged logits."""
        logits: torch.Tensor = self.model(features)
        return torch.cat([logits[:, g[0]:g[0] + 1] if len(g) == 1
                          else torch.logsumexp(logits[:, g], dim=1, keepdim=True)
                          for g in self.groups], dim=1)


UNTAUGHT_LOGIT_OFFSET = -1.0e4
"""Added to the logit of a class no training clip taught: softmax gives it 0 in float32 at any
temperature a card fits (0.3-5), and the other classes' probabilities are unchanged."""


class WithoutUntaught(nn.Module):
    """A model served without the classes no training clip taught: an operator's 4-emotion
    calls gave a model whose 3 untaught classes took ~40 % of every segment's probability,
    fear feeding the stress score (a review). Their logits are pushed out of reach
    (:data:`UNTAUGHT_LOGIT_OFFSET`); the outputs keep every served class, as the worker and
    the segments table expect."""

    offset: torch.Tensor

    def __init__(self, model: nn.Module, untaught: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.model = model
        offset = torch.zeros(n_classes)
        offset[list(untaught)] = UNTAUGHT_LOGIT_OFFSET
        self.register_buffer("offset", offset)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, rows, frames) -> (batch, classes) logits, the untaught far under."""
        logits: torch.Tensor = self.model(features)
        return logits + self.offset


def build_model(config: ModelConfig) -> EmotionCNN | EmotionEnsemble:
    """One EmotionCNN (``members`` == 1, the graph emotion-v1.4.0 and earlier have) or an
    ensemble of them."""
    return EmotionCNN(config) if config.members == 1 else EmotionEnsemble(config)


def multiply_adds(config: ModelConfig, frames: int = 300) -> int:
    """Multiply-adds of one forward pass of the served graph over ``frames`` feature frames
    (300: 3 s at the 10 ms hop), counted by forward hooks on the convolutions and linear
    layers (pooling, batch norm and activations are left out: a few per cent at most). The
    compute budget of the model docs is in these units per 3 s."""
    model = build_model(config).eval()
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear) and "arousal" not in module_names[module]:
            total += module.in_features * module.out_features

    module_names = {m: name for name, m in model.named_modules()}
    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, config.views * config.n_mels, frames))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of the served graph (an arousal head is not exported)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if p.requires_grad and "arousal_head" not in name)
