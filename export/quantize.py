"""Weight quantization of the exported ONNX graphs with onnxruntime's own tools.

| precision | source op | quantized op                        | weights                   |
| --------- | --------- | ----------------------------------- | ------------------------- |
| int8      | MatMul    | MatMulNBits (com.microsoft), 8 bits | int8 blocks of 64 along K |
| int8      | Gather    | Gather on int8 + DequantizeLinear   | int8, per channel         |
| int4      | MatMul    | MatMulNBits (com.microsoft)         | 4-bit blocks along K      |
| int4      | Gather    | GatherBlockQuantized (com.microsoft) | 4-bit blocks             |

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

import onnx

from shadow_edge.export.onnx_export import move_weights_to_external_data, save_graph

logger = logging.getLogger(__name__)

# Node-name fragments of the adapter modules in the traced graphs (module paths in graphs.py).
ADAPTER_NODE_MARKERS = ("/injections.", "/updates.")
DEFAULT_INT4_BLOCK_SIZE = 32
DEFAULT_INT8_BLOCK_SIZE = 64


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


def _weight_only(model: onnx.ModelProto, bits: int, block_size: int, op_types: tuple[str, ...]):
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    excluded = adapter_nodes(model)
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
    with _quiet_quantizer():
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


def quantize_int4(source: Path, target: Path, block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> None:
    """Write a 4-bit block-quantized copy of `source` (MatMulNBits, GatherBlockQuantized).

    NOTE: on SmolLM2-135M with the demo adapter, int4 costs 10 points of demo exact match
    (75.0% against 85.0%). Blocks of 16 or 8-bit head, attention or edge layers score 72% to
    78%, and onnxruntime's GPTQ took over 20 minutes on the backbone and was stopped.
    """
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"int4 block size must be a power of two >= 16, got {block_size}")
    model = _weight_only(onnx.load(str(source)), 4, block_size, ("MatMul", "Gather"))
    save_graph(model, target)
    logger.info("int4: %s (block size %d)", target.name, block_size)
