"""Weight quantization of the exported ONNX graphs, built on onnxruntime's contrib ops.

| precision | source op | quantized op                         | weights                         |
| --------- | --------- | ------------------------------------ | ------------------------------- |
| int8      | MatMul    | MatMulNBits (com.microsoft), 8 bits  | int8 blocks of 64 along K       |
| int8      | Gather    | Gather on int8 + DequantizeLinear    | int8, per channel               |
| int4      | MatMul    | MatMulNBits + a float MatMul per op  | 4-bit blocks along K, scale and |
|           |           | for the block minimums ("affine")    | minimum per block (like Q4_1)   |
| int4      | Gather    | GatherBlockQuantized (com.microsoft) | symmetric 4-bit blocks          |

The int4 "symmetric" scheme is onnxruntime's default quantizer alone: one scale per block
around zero. On SmolLM2-135M with the demo adapter it scored 75.0% demo exact match against
85.0% for fp32, and "affine" 83.0% (300 held-out examples). Affine decoded at 0.95x the
speed of int8 in `make bench`, and symmetric at 0.96x in an earlier run.

What stays in float32, and why:
- the injection and update matrices (d x r and r x d, with r around 16): under 1% of the
  weights, and they carry the whole adaptation, so quantizing them costs accuracy and saves
  almost nothing;
- norms, rotary tables and attention arithmetic: not weight matrices.
Both are weight-only: activations stay in float (MatMulNBits may quantize them per block at
run time, accuracy level 4), so no calibration data is needed.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from shadow_edge import bundle
from shadow_edge.export.onnx_export import move_weights_to_external_data, save_graph

logger = logging.getLogger(__name__)

# Node-name fragments of the adapter modules in the traced graphs (module paths in graphs.py).
ADAPTER_NODE_MARKERS = ("/injections.", "/updates.")
DEFAULT_INT4_BLOCK_SIZE = 32
DEFAULT_INT8_BLOCK_SIZE = 64
DEFAULT_INT4_SCHEME = "affine"


def adapter_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if any(m in n.name for m in ADAPTER_NODE_MARKERS)]


class _DropPreprocessingHint(logging.Filter):
    """A filter for the root logger that drops onnxruntime's quantization pre-processing hint.

    quantize_dynamic logs it on every call. The exporter uses quantize_dynamic only for the
    embedding Gather, which needs no shape inference or graph pre-processing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextmanager
def _quiet_quantizer():
    """Silence onnxruntime's per-node quantizer log lines (it sets its own logger to INFO)."""
    quantizer_logger = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_logger.level
    quantizer_logger.setLevel(logging.CRITICAL)
    hint_filter = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        yield
    finally:
        quantizer_logger.setLevel(level)
        logging.getLogger().removeFilter(hint_filter)


def _weight_only(
    model: onnx.ModelProto,
    bits: int,
    block_size: int,
    op_types: tuple[str, ...],
    keep_float: frozenset[str] = frozenset(),
):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    excluded = adapter_nodes(model) + sorted(keep_float)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        # Level 4 lets MatMulNBits compute in int8 on CPU, its fast path for decode.
        accuracy_level=4,
        op_types_to_quantize=op_types,
        bits=bits,
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=excluded,
        algo_config=config,
        bits=bits,
    )
    # onnxruntime divides by each block's scale before masking zero scales, so an all-zero
    # block (a padding token's embedding row) raises numpy warnings about a harmless NaN.
    with _quiet_quantizer(), np.errstate(divide="ignore", invalid="ignore"):
        quantizer.process()
    return quantizer.model.model


def quantize_int8(source: Path, target: Path, block_size: int = DEFAULT_INT8_BLOCK_SIZE) -> None:
    """Write an int8 copy of `source`: 8-bit block weights for MatMul, int8 embeddings.

    Weight-only MatMulNBits keeps activations in float between blocks. onnxruntime's
    dynamic int8 (MatMulInteger with one activation scale per tensor) was tried first and
    lost top-1 agreement on SmolLM2 (95.7% against 100% for this form, 6 held-out prompts).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _weight_only(onnx.load(str(source)), 8, block_size, ("MatMul",))
    # MatMulNBits quantizes no Gather at 8 bits, so the embedding table goes through the
    # dynamic quantizer: int8 rows with a DequantizeLinear after the lookup.
    with _quiet_quantizer():
        quantize_dynamic(
            model,
            str(target),
            op_types_to_quantize=["Gather"],
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    move_weights_to_external_data(target)
    logger.info("int8: %s (block size %d)", target.name, block_size)


def _affine_int4_blocks(weight: np.ndarray, block_size: int):
    """Split a [K, N] weight into 4-bit codes, scales and offsets for `_affine_int4_matmuls`.

    Returns packed codes [N, K / block_size, block_size / 2] (low nibble first, the
    MatMulNBits layout), scales [N * K / block_size] and offsets [K / block_size, N], with
    weight = scale * (code - 8) + offset in every block.
    """
    k, n = weight.shape
    blocks = weight.T.reshape(n, k // block_size, block_size)
    low = blocks.min(axis=-1)
    scale = (blocks.max(axis=-1) - low) / 15
    step = np.where(scale > 0, scale, 1)  # a constant block has scale 0 and all codes 0
    codes = np.rint((blocks - low[..., None]) / step[..., None])
    codes = np.clip(codes, 0, 15).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    offsets = (low + 8 * scale).T.astype(np.float32)
    return packed, scale.astype(np.float32).reshape(-1), np.ascontiguousarray(offsets)


def _affine_int4_matmuls(model: onnx.ModelProto, block_size: int) -> set[str]:
    """Replace float MatMuls by 4-bit MatMulNBits with a per-block minimum.

    Each block of `block_size` weights along K stores a scale and its minimum, like llama.cpp's
    Q4_1: w = scale * code + minimum, codes 0..15. MatMulNBits has no fast CPU kernel for a
    float zero point (2.2 against 39.3 tokens/s on SmolLM2), so the weight is split in two.
    MatMulNBits computes x @ (scale * (code - 8)) with its default zero point. A small float
    MatMul adds block_sums(x) @ (minimum + 8 * scale), which has one weight per block.

    Skips adapter nodes and MatMuls whose K is not a whole number of blocks. Returns the
    names of the float MatMuls it adds, which must stay in float.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    skip = set(adapter_nodes(model))
    block_sums: dict[str, str] = {}  # activation name -> name of its block sums
    indicators: dict[int, str] = {}  # K -> name of the [K, K / block_size] 0/1 block matrix
    nodes: list[onnx.NodeProto] = []
    replaced: set[str] = set()
    added: set[str] = set()
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            weight is None
            or node.name in skip
            or len(weight.dims) != 2
            or weight.data_type != onnx.TensorProto.FLOAT
            or weight.dims[0] % block_size
        ):
            nodes.append(node)
            continue

        k, n = weight.dims
        packed, scales, offsets = _affine_int4_blocks(numpy_helper.to_array(weight), block_size)
        x, y = node.input[0], node.output[0]
        base = node.name or y
        if k not in indicators:
            indicators[k] = f"block_indicator_{k}_{block_size}"
            ones = np.ones((block_size, 1), np.float32)
            indicator = np.kron(np.eye(k // block_size, dtype=np.float32), ones)
            graph.initializer.append(numpy_helper.from_array(indicator, indicators[k]))
        if x not in block_sums:
            # q, k and v (and gate and up) read the same input, so they share its block sums.
            block_sums[x] = f"{x}_block_sums_{block_size}"
            name = f"{base}_block_sums"
            nodes.append(helper.make_node("MatMul", [x, indicators[k]], [block_sums[x]], name=name))
            added.add(name)

        codes_name, scales_name, offsets_name = (
            f"{base}_Q4.{part}" for part in ("codes", "scales", "offsets")
        )
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, codes_name),
                numpy_helper.from_array(scales, scales_name),
                numpy_helper.from_array(offsets, offsets_name),
            ]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [x, codes_name, scales_name],
                [f"{y}_codes"],
                name=f"{base}_Q4",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=block_size,
                # Level 4 lets MatMulNBits compute in int8 on CPU, its fast path for decode.
                accuracy_level=4,
            )
        )
        offsets_node = f"{base}_offsets"
        nodes.append(
            helper.make_node(
                "MatMul", [block_sums[x], offsets_name], [f"{y}_offsets"], name=offsets_node
            )
        )
        nodes.append(
            helper.make_node("Add", [f"{y}_codes", f"{y}_offsets"], [y], name=f"{base}_add")
        )
        added.add(offsets_node)
        replaced.add(weight.name)

    still_used = {name for node in nodes for name in node.input}
    unused = replaced - still_used
    remaining = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return added


def quantize_int4(
    source: Path,
    target: Path,
    block_size: int = DEFAULT_INT4_BLOCK_SIZE,
    scheme: str = DEFAULT_INT4_SCHEME,
) -> int:
    """Write a 4-bit block-quantized copy of `source` (MatMulNBits, GatherBlockQuantized).

    `scheme` "affine" stores a scale and a minimum per MatMul block (see _affine_int4_matmuls);
    "symmetric" is onnxruntime's default, one scale per block around zero. The embedding
    table is symmetric 4-bit in both. Returns how many MatMuls got symmetric blocks although
    `scheme` is "affine", because their K is not a multiple of `block_size`.
    """
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"int4 block size must be a power of two >= 16, got {block_size}")
    if scheme not in bundle.INT4_SCHEMES:
        raise ValueError(
            f"int4 scheme must be one of {', '.join(bundle.INT4_SCHEMES)}; got {scheme!r}"
        )
    model = onnx.load(str(source))
    keep_float = frozenset()
    if scheme == "affine":
        keep_float = frozenset(_affine_int4_matmuls(model, block_size))
    affine = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    # MatMuls that the affine pass skipped (K not whole blocks) get symmetric blocks here.
    model = _weight_only(model, 4, block_size, ("MatMul", "Gather"), keep_float)
    quantized = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    fallback = quantized - affine if scheme == "affine" else 0
    save_graph(model, target)
    logger.info("int4: %s (%s, block size %d)", target.name, scheme, block_size)
    return fallback
