"""One description of a ShadowPEFT model, whichever library trained it.

Loaders (`shadow_edge.export.load`) turn a base model plus a checkpoint of either dialect
into a `ShadowModelSpec`: the modules each graph needs and, per adapted base layer, an
injection and an update module. The graphs in `shadow_edge.export.graphs` only read this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn


class ShadowPeftInjection(nn.Module):
    """shadow-peft injection: `h + alpha * ((h - s) @ D) @ U`, D (d, r) and U (r, d)."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, alpha: float) -> None:
        super().__init__()
        self.down = nn.Parameter(down.detach().clone(), requires_grad=False)
        self.up = nn.Parameter(up.detach().clone(), requires_grad=False)
        self.alpha = float(alpha)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return h + self.alpha * torch.matmul(torch.matmul(h - s, self.down), self.up)


class ShadowPeftUpdate(nn.Module):
    """shadow-peft update: `x = LN(h)`, `s + sigmoid(G(x)) * (T(x) - s)` with SiLU MLPs G, T."""

    def __init__(self, norm: nn.LayerNorm, gate: nn.Module, transform: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.gate = gate
        self.transform = transform

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = self.norm(h)
        return s + self.gate(x) * (self.transform(x) - s)


class PeftInjection(nn.Module):
    """peft ShadowPEFT injection: `h + alpha * up(down(h - s))`, both linear maps without bias."""

    def __init__(self, down: nn.Linear, up: nn.Linear, alpha: float) -> None:
        super().__init__()
        self.down = down
        self.up = up
        self.alpha = float(alpha)

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return h + self.alpha * self.up(self.down(h - s))


class PeftUpdate(nn.Module):
    """peft ShadowPEFT update: `g = sigmoid(G(h))`, `(1 - g) * s + g * T(h)`, GELU MLPs G, T."""

    def __init__(self, gate: nn.Module, transform: nn.Module) -> None:
        super().__init__()
        self.gate = gate
        self.transform = transform

    def forward(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(h))
        return (1 - g) * s + g * self.transform(h)


@dataclass
class ShadowModelSpec:
    """Everything the exporter needs from a loaded base model and shadow adapter."""

    dialect: str  # "shadow-peft" or "peft"
    base_config: Any  # the base model's transformers config
    shadow_config: Any  # the shadow backbone's transformers config
    base_embed: nn.Module
    base_layers: nn.ModuleList
    base_norm: nn.Module
    base_rotary: nn.Module
    base_head: nn.Module
    shadow_embed: nn.Module
    shadow_layers: nn.ModuleList
    shadow_norm: nn.Module
    shadow_rotary: nn.Module
    shadow_head: nn.Module
    projection: nn.Module | None
    adapted_layers: list[int]
    injections: list[nn.Module]
    updates: list[nn.Module]
    base_embed_scale: float = 1.0
    shadow_embed_scale: float = 1.0
    # The library's own model, kept for parity checks (`verify`).
    reference: Any = None
    # The library's own forward: (input_ids (1, T), detached) -> logits (1, T, vocab).
    reference_logits: Callable[[torch.Tensor, bool], torch.Tensor] | None = None
    adapter_settings: dict[str, Any] = field(default_factory=dict)
    trained_shadow_head: bool = False

    @property
    def num_base_layers(self) -> int:
        return len(self.base_layers)

    @property
    def num_shadow_layers(self) -> int:
        return len(self.shadow_layers)
