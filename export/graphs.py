"""Torch modules that become the bundle's two ONNX graphs.

Both graphs take explicit key/value tensors instead of transformers' cache objects, so one
graph serves prefill (many tokens) and decode (one token): `present = concat(past, new)`.
The decoder-layer math is written out here (not called through transformers' forward) so
the traced graph has no cache classes, mask builders or Python branches on shapes. It uses
the checkpoint's own modules (projections, norms, MLP, rotary embedding), and the parity
tests hold it to the reference library's forward.

Logits are computed only at the positions listed in the `logits_indices` input. Combined
mode passes an empty list to the shadow graph, so it never pays for the shadow head. It
passes only the last position to the backbone, and `verify` passes every position.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shadow_edge.export.spec import ShadowModelSpec


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def causal_mask(attention_mask: torch.Tensor, query_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Build an additive mask (B, 1, T, P+T) from a (B, P+T) 0/1 padding mask."""
    total = attention_mask.shape[1]
    past = total - query_len
    query_pos = torch.arange(query_len, device=attention_mask.device).unsqueeze(1) + past
    key_pos = torch.arange(total, device=attention_mask.device).unsqueeze(0)
    allowed = (key_pos <= query_pos).unsqueeze(0) & attention_mask.bool().unsqueeze(1)
    minimum = torch.finfo(dtype).min
    mask = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), minimum, dtype=dtype))
    return mask.unsqueeze(1)


def decoder_layer(
    layer: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run one pre-norm decoder layer (Llama, Mistral, Qwen2, Qwen3) with an explicit cache."""
    attn = layer.self_attn
    B, T, _ = h.shape
    head_dim = attn.head_dim

    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(B, T, -1, head_dim)
    k = attn.k_proj(x).view(B, T, -1, head_dim)
    v = attn.v_proj(x).view(B, T, -1, head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    q = q.transpose(1, 2)  # (B, n_heads, T, head_dim)
    k = k.transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
    v = v.transpose(1, 2)

    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin

    key = torch.cat([past_key, k], dim=2)  # (B, n_kv_heads, P+T, head_dim)
    value = torch.cat([past_value, v], dim=2)

    n_heads, n_kv_heads = q.shape[1], key.shape[1]
    groups = n_heads // n_kv_heads
    q = q.reshape(B, n_kv_heads, groups * T, head_dim)  # group query heads per kv head
    scores = torch.matmul(q, key.transpose(2, 3)) * attn.scaling
    scores = scores.view(B, n_kv_heads, groups, T, -1) + mask.unsqueeze(1)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(B, n_kv_heads, groups * T, -1), value)
    out = out.view(B, n_heads, T, head_dim).transpose(1, 2).reshape(B, T, n_heads * head_dim)

    h = h + attn.o_proj(out)
    h = h + layer.mlp(layer.post_attention_layernorm(h))
    return h, key, value


def select_logits(head: nn.Module, hidden: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Apply the LM head only at the positions in `indices` (B, K, vocab)."""
    return head(hidden.index_select(1, indices))


class ShadowGraph(nn.Module):
    """The detached path: shadow backbone, projection to the base width, shadow head.

    Inputs: input_ids (B, T), attention_mask (B, P+T), position_ids (B, T),
    logits_indices (K,), then past key and value per shadow layer (B, n_kv, P, head_dim).
    Outputs: shadow_hidden `s0` (B, T, d_base), logits (B, K, vocab), present key/values.
    """

    def __init__(self, spec: ShadowModelSpec) -> None:
        super().__init__()
        self.embed = spec.shadow_embed
        self.layers = spec.shadow_layers
        self.norm = spec.shadow_norm
        self.rotary = spec.shadow_rotary
        self.projection = spec.projection
        self.head = spec.shadow_head
        self.embed_scale = spec.shadow_embed_scale

    def forward(self, input_ids, attention_mask, position_ids, logits_indices, *past):
        h = self.embed(input_ids)
        if self.embed_scale != 1.0:
            h = h * self.embed_scale
        cos, sin = self.rotary(h, position_ids)
        mask = causal_mask(attention_mask, input_ids.shape[1], h.dtype)
        presents = []
        for i, layer in enumerate(self.layers):
            h, key, value = decoder_layer(layer, h, cos, sin, mask, past[2 * i], past[2 * i + 1])
            presents += [key, value]
        s0 = self.norm(h)
        if self.projection is not None:
            s0 = self.projection(s0)
        logits = select_logits(self.head, s0, logits_indices)
        return (s0, logits, *presents)


class BackboneGraph(nn.Module):
    """The base path with injection before and update after each adapted layer.

    Inputs: input_ids (B, T), shadow_hidden `s0` (B, T, d), attention_mask (B, P+T),
    position_ids (B, T), logits_indices (K,), then past key and value per base layer.
    Outputs: logits (B, K, vocab) and present key/values.
    """

    def __init__(self, spec: ShadowModelSpec) -> None:
        super().__init__()
        self.embed = spec.base_embed
        self.layers = spec.base_layers
        self.norm = spec.base_norm
        self.rotary = spec.base_rotary
        self.head = spec.base_head
        self.injections = nn.ModuleList(spec.injections)
        self.updates = nn.ModuleList(spec.updates)
        self.adapted = list(spec.adapted_layers)
        self.embed_scale = spec.base_embed_scale

    def forward(
        self, input_ids, shadow_hidden, attention_mask, position_ids, logits_indices, *past
    ):
        h = self.embed(input_ids)
        if self.embed_scale != 1.0:
            h = h * self.embed_scale
        s = shadow_hidden
        cos, sin = self.rotary(h, position_ids)
        mask = causal_mask(attention_mask, input_ids.shape[1], h.dtype)
        presents = []
        for i, layer in enumerate(self.layers):
            slot = self.adapted.index(i) if i in self.adapted else None
            if slot is not None:
                h = self.injections[slot](h, s)
            h, key, value = decoder_layer(layer, h, cos, sin, mask, past[2 * i], past[2 * i + 1])
            if slot is not None:
                s = self.updates[slot](h, s)
            presents += [key, value]
        logits = select_logits(self.head, self.norm(h), logits_indices)
        return (logits, *presents)
