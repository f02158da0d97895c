"""Weight quantization of the exported ONNX graphs with onnxruntime's own tools.

| precision | source op | quantized op                        | weights                   |
| --------- | --------- | ----------------------------------- | ------------------------- |
| int8      | MatMul    | DynamicQuantizeLinear + MatMulInteger | int8, per output channel |
| int8      | Gather    | Gather on int8 + DequantizeLinear   | int8 embedding table      |
| int4      | MatMul    | MatMulNBits (com.microsoft)         | 4-bit blocks along K      |
| int4      | Gather    | GatherBlockQuantized (com.microsoft) | 4-bit blocks             |

What stays in float32, and why:
- the injection and update matrices (d x r and r x d, with r around 16): under 1% of the
  weights, and they carry the whole adaptation, so quantizing them costs accuracy and saves
  almost nothing;
- norms, rotary tables and attention arithmetic: not weight matrices.
int8 activations are quantized per call (dynamic), so no calibration data is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

logger = logging.getLogger(__name__)

# Node-name fragments of the adapter modules in the traced graphs (module paths in graphs.py).
ADAPTER_NODE_MARKERS = ("/injections.", "/updates.")
DEFAULT_INT4_BLOCK_SIZE = 32


def adapter_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if any(m in n.name for m in ADAPTER_NODE_MARKERS)]


def quantize_int8(source: Path, target: Path) -> None:
    """Write an int8 copy of `source` (dynamic MatMul quantization, int8 embeddings)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    excluded = adapter_nodes(model)
    quantize_dynamic(
        model,
        str(target),
        op_types_to_quantize=["MatMul", "Gather"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        extra_options={"MatMulConstBOnly": True},
    )
    logger.info("int8: %s (kept %d adapter nodes in float)", target.name, len(excluded))


def quantize_int4(source: Path, target: Path, block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> None:
    """Write a 4-bit block-quantized copy of `source` (MatMulNBits, GatherBlockQuantized)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"int4 block size must be a power of two >= 16, got {block_size}")
    model = onnx.load(str(source))
    excluded = adapter_nodes(model)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        # Level 4 lets MatMulNBits compute in int8 on CPU, its fast path for decode.
        accuracy_level=4,
        op_types_to_quantize=("MatMul", "Gather"),
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=excluded,
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    logger.info("int4: %s (block size %d)", target.name, block_size)
