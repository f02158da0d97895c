"""Trace the shadow and backbone modules into ONNX graphs with dynamic batch and lengths."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from shadow_edge import bundle as names
from shadow_edge.export.graphs import BackboneGraph, ShadowGraph
from shadow_edge.export.spec import ShadowModelSpec

logger = logging.getLogger(__name__)

OPSET = 18
# Protobuf caps one file at 2 GiB; larger graphs keep their weights in a side file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class CacheShape:
    """Key/value cache layout of one stack: `layers` pairs of (B, kv_heads, P, head_dim)."""

    layers: int
    kv_heads: int
    head_dim: int


def cache_shape(layers, config) -> CacheShape:
    attn = layers[0].self_attn
    kv_heads = attn.k_proj.out_features // attn.head_dim
    return CacheShape(len(layers), kv_heads, attn.head_dim)


def _sample_inputs(spec: ShadowModelSpec, cache: CacheShape, with_shadow: bool):
    B, T, P = 1, 3, 2
    ids = torch.randint(0, spec.base_config.vocab_size, (B, T))
    mask = torch.ones(B, P + T, dtype=torch.long)
    positions = torch.arange(P, P + T).unsqueeze(0)
    logits_indices = torch.arange(T)
    past = []
    for _ in range(cache.layers):
        past.append(torch.zeros(B, cache.kv_heads, P, cache.head_dim))
        past.append(torch.zeros(B, cache.kv_heads, P, cache.head_dim))
    if with_shadow:
        hidden = torch.zeros(B, T, spec.base_config.hidden_size)
        return (ids, hidden, mask, positions, logits_indices, *past)
    return (ids, mask, positions, logits_indices, *past)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` to `path` with its weights in `<name>.data` beside it.

    onnxruntime maps external data from disk, while weights inside the graph file are parsed
    into a second copy first. On SmolLM2's int8 graphs that copy raised the loading peak
    from about 300 to 500 MiB. Large models need external data anyway, because protobuf
    caps a graph file at 2 GiB.
    """
    data = path.with_name(names.external_data_name(path.name))
    # onnx appends to an existing data file, so start from an empty one.
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    # A graph with only small tensors gets no data file from onnx. The bundle lists one for
    # every graph, so write it empty.
    data.touch()
    # onnx creates the data file readable by its owner only, so copy the graph file's mode.
    data.chmod(path.stat().st_mode & 0o777)


def move_weights_to_external_data(path: Path) -> None:
    """Rewrite the graph at `path` with its weights in `<name>.data` (see `save_graph`)."""
    save_graph(onnx.load(str(path)), path)  # onnx.load reads any external data already there


def _export(module, args, input_names, output_names, dynamic_axes, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    move_weights_to_external_data(path)


def _cache_axes(cache: CacheShape):
    inputs, outputs, axes = [], [], {}
    for i in range(cache.layers):
        for kind in ("key", "value"):
            past = names.past_name(i, kind)
            present = names.present_name(i, kind)
            inputs.append(past)
            outputs.append(present)
            axes[past] = {0: "batch", 2: "past_length"}
            axes[present] = {0: "batch", 2: "total_length"}
    return inputs, outputs, axes


def export_shadow_graph(spec: ShadowModelSpec, path: Path) -> CacheShape:
    cache = cache_shape(spec.shadow_layers, spec.shadow_config)
    past_names, present_names, cache_axes = _cache_axes(cache)
    input_names = [names.INPUT_IDS, names.ATTENTION_MASK, names.POSITION_IDS, names.LOGITS_INDICES]
    output_names = [names.SHADOW_HIDDEN, names.LOGITS]
    axes = {
        names.INPUT_IDS: {0: "batch", 1: "length"},
        names.ATTENTION_MASK: {0: "batch", 1: "total_length"},
        names.POSITION_IDS: {0: "batch", 1: "length"},
        names.LOGITS_INDICES: {0: "num_logits"},
        names.SHADOW_HIDDEN: {0: "batch", 1: "length"},
        names.LOGITS: {0: "batch", 1: "num_logits"},
        **cache_axes,
    }
    graph = ShadowGraph(spec).eval()
    with torch.no_grad():
        _export(
            graph,
            _sample_inputs(spec, cache, with_shadow=False),
            input_names + past_names,
            output_names + present_names,
            axes,
            path,
        )
    return cache


def export_backbone_graph(spec: ShadowModelSpec, path: Path) -> CacheShape:
    cache = cache_shape(spec.base_layers, spec.base_config)
    past_names, present_names, cache_axes = _cache_axes(cache)
    input_names = [
        names.INPUT_IDS,
        names.SHADOW_HIDDEN,
        names.ATTENTION_MASK,
        names.POSITION_IDS,
        names.LOGITS_INDICES,
    ]
    axes = {
        names.INPUT_IDS: {0: "batch", 1: "length"},
        names.SHADOW_HIDDEN: {0: "batch", 1: "length"},
        names.ATTENTION_MASK: {0: "batch", 1: "total_length"},
        names.POSITION_IDS: {0: "batch", 1: "length"},
        names.LOGITS_INDICES: {0: "num_logits"},
        names.LOGITS: {0: "batch", 1: "num_logits"},
        **cache_axes,
    }
    graph = BackboneGraph(spec).eval()
    with torch.no_grad():
        _export(
            graph,
            _sample_inputs(spec, cache, with_shadow=True),
            input_names + past_names,
            [names.LOGITS] + present_names,
            axes,
            path,
        )
    return cache
