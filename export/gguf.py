"""Write the detached shadow as a stock llama.cpp model (GGUF).

The detached path is an ordinary decoder of the base's architecture with fewer layers:
embeddings, shadow layers, shadow final norm, shadow head. Written under the base's llama.cpp
architecture name (`llama` for Llama and Mistral, `qwen2`, `qwen3`), llama.cpp and every tool
built on it load the file as it is. Two steps keep it stock:

- A projection P (Linear d_shadow -> d_base, no bias) is folded into the head:
  `output.weight = W_head @ P`, a [vocab, d_shadow] matrix.
- For the `llama` architecture the Q and K rows are reordered for llama.cpp's rotary
  embedding (see `interleave_rope_rows`). `qwen2` and `qwen3` keep the Hugging Face order.

Precision table (`gguf_type`):

| gguf_type | written by | 2-D weights | 1-D weights (norms, biases) |
| --- | --- | --- | --- |
| f32 | gguf-py | F32 | F32 |
| f16 | gguf-py | F16 | F32 |
| q8_0 | gguf-py `gguf.quants` | Q8_0 (F16 where a row is not a multiple of 32) | F32 |
| q4_0 ... q6_k | llama.cpp `llama_model_quantize` from an F16 file | llama.cpp's mix | F32 |
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import torch.nn as nn

from shadow_edge.errors import ShadowEdgeError, UnsupportedModelError
from shadow_edge.export.spec import ShadowModelSpec

logger = logging.getLogger(__name__)

# gguf_type -> (tensor type of 2-D weights, file type), for the types gguf-py writes itself.
DIRECT_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# gguf_type -> file type for the types llama.cpp's quantizer writes from an F16 file.
LLAMA_CPP_TYPES = {
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
    "q2_k": gguf.LlamaFileType.MOSTLY_Q2_K,
    "q3_k_s": gguf.LlamaFileType.MOSTLY_Q3_K_S,
    "q3_k_m": gguf.LlamaFileType.MOSTLY_Q3_K_M,
    "q3_k_l": gguf.LlamaFileType.MOSTLY_Q3_K_L,
    "q4_k_s": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "q5_k_s": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "q5_k_m": gguf.LlamaFileType.MOSTLY_Q5_K_M,
    "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K,
}
SUPPORTED_GGUF_TYPES = (*DIRECT_TYPES, *LLAMA_CPP_TYPES)

# transformers model_type -> llama.cpp architecture.
GGUF_ARCHITECTURES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
}

# Decoder-layer module path (transformers) -> GGUF tensor.
LAYER_TENSORS = {
    "input_layernorm": gguf.MODEL_TENSOR.ATTN_NORM,
    "self_attn.q_proj": gguf.MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": gguf.MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": gguf.MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "self_attn.q_norm": gguf.MODEL_TENSOR.ATTN_Q_NORM,
    "self_attn.k_norm": gguf.MODEL_TENSOR.ATTN_K_NORM,
    "post_attention_layernorm": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.gate_proj": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}

# Biases each llama.cpp architecture reads, found by loading tiny models with random
# biases in llama-cpp-python 0.3.36. llama.cpp rejects a file that contains a tensor it does
# not read, so any other bias is rejected before writing.
SUPPORTED_BIASES = {
    gguf.MODEL_ARCH.LLAMA: {
        gguf.MODEL_TENSOR.ATTN_Q,
        gguf.MODEL_TENSOR.ATTN_K,
        gguf.MODEL_TENSOR.ATTN_V,
        gguf.MODEL_TENSOR.ATTN_OUT,
        gguf.MODEL_TENSOR.FFN_GATE,
        gguf.MODEL_TENSOR.FFN_UP,
        gguf.MODEL_TENSOR.FFN_DOWN,
    },
    gguf.MODEL_ARCH.QWEN2: {
        gguf.MODEL_TENSOR.ATTN_Q,
        gguf.MODEL_TENSOR.ATTN_K,
        gguf.MODEL_TENSOR.ATTN_V,
    },
    gguf.MODEL_ARCH.QWEN3: set(),
}

# Pre-tokenizer names (llama.cpp `tokenizer.ggml.pre`) of tokenizers recognized by the ids
# they give for FINGERPRINT_TEXT. The SmolLM family keeps digits apart and its merges
# never join two digits, so a tokenizer.json that splits digits and one converted back from
# a GGUF file (plain byte-level split) both match here.
FINGERPRINT_TEXT = (
    "Turn the Kitchen lights OFF at 07:45, then set 21.5 degrees!\n\n"
    "  indented\tline -- it's, we'll, they'd\r\n"
    "2024 + 123456 = ?   ünïcödé café 東京 🙂 <tag>"
)
KNOWN_TOKENIZER_FINGERPRINTS = {
    # SmolLM2-135M-Instruct (49152 tokens)
    "a1bd75e7b76d677032b8a67ff25fc19ebf01bbe7fcedf13c5a0ca96162fc3d9b": "smollm",
}
# Split patterns of byte-level BPE tokenizers whose llama.cpp pre-tokenizer uses the same
# pattern.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PATTERN_PRE_TOKENIZERS = {QWEN2_SPLIT_PATTERN: "qwen2", LLAMA3_SPLIT_PATTERN: "llama-bpe"}


def write_shadow_gguf(
    spec: ShadowModelSpec, tokenizer_dir: Path, out_path: Path, gguf_type: str = "f16"
) -> Path:
    """Write the detached shadow of `spec` to `out_path` as a stock llama.cpp GGUF model.

    `tokenizer_dir` is the folder with tokenizer.json (usually the base model folder);
    `gguf_type` is one of SUPPORTED_GGUF_TYPES. Types outside DIRECT_TYPES need
    llama-cpp-python. Raises UnsupportedModelError for a model or tokenizer that has no
    stock llama.cpp form.
    """
    if gguf_type not in SUPPORTED_GGUF_TYPES:
        raise ValueError(
            f"unknown gguf_type {gguf_type!r}; supported: {', '.join(SUPPORTED_GGUF_TYPES)}"
        )
    tokenizer_dir = Path(tokenizer_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    if gguf_type in DIRECT_TYPES:
        _write_file(spec, tokenizer_dir, out_path, gguf_type)
        return out_path

    try:
        import llama_cpp
    except ImportError as exc:
        raise ImportError(
            f"gguf_type {gguf_type!r} is written by llama.cpp's quantizer, which needs "
            "llama-cpp-python: pip install 'shadow-edge[gguf]', or pick one of "
            f"{', '.join(DIRECT_TYPES)}"
        ) from exc
    f16_path = out_path.with_name(out_path.name + ".f16.tmp")
    try:
        _write_file(spec, tokenizer_dir, f16_path, "f16")
        _quantize_with_llama_cpp(llama_cpp, f16_path, out_path, gguf_type)
    finally:
        f16_path.unlink(missing_ok=True)
    return out_path


def read_gguf_summary(path: Path) -> dict[str, Any]:
    """Read architecture, block count, tensor count and file type from a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise ShadowEdgeError(f"GGUF file {path} not found")
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as exc:  # gguf-py raises ValueError for a bad magic or version
        raise ShadowEdgeError(f"{path} is not a readable GGUF file: {exc}") from exc

    def field(key: str, default: Any = None) -> Any:
        found = reader.get_field(key)
        return default if found is None else found.contents()

    arch = field(gguf.Keys.General.ARCHITECTURE)
    file_type = field(gguf.Keys.General.FILE_TYPE)
    try:
        file_type_name = gguf.LlamaFileType(file_type).name
    except ValueError:  # the key is missing or names a type this gguf-py does not know
        file_type_name = None
    tokens = reader.get_field(gguf.Keys.Tokenizer.LIST)
    tensor_types: dict[str, int] = {}
    for tensor in reader.tensors:
        name = tensor.tensor_type.name
        tensor_types[name] = tensor_types.get(name, 0) + 1
    return {
        "architecture": arch,
        "block_count": field(gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)),
        "embedding_length": field(gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)),
        "tensor_count": len(reader.tensors),
        "tensor_types": tensor_types,
        "file_type": file_type,
        "file_type_name": file_type_name,
        "tokenizer_pre": field(gguf.Keys.Tokenizer.PRE),
        "vocab_size": None if tokens is None else len(tokens.data),
    }


# --- model tensors ------------------------------------------------------------------------


def gguf_architecture(config) -> gguf.MODEL_ARCH:
    """Map a transformers config to the llama.cpp architecture the shadow is written as."""
    model_type = getattr(config, "model_type", None)
    if model_type not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"shadow architecture {model_type!r} has no stock llama.cpp form; "
            f"supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return GGUF_ARCHITECTURES[model_type]


def interleave_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q or K projection rows from the rotate-half layout to adjacent pairs.

    transformers rotates dimension pairs (j, j + head_dim/2) of each head; llama.cpp's rotary
    embedding for the `llama` architecture rotates pairs (2j, 2j + 1). Moving row j to 2j and
    row j + head_dim/2 to 2j + 1 in both Q and K gives the same attention scores, because a
    dot product does not change when both vectors are permuted alike. Works on weights
    (rows, in) and biases (rows,).
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    if head_dim * n_heads != rows or head_dim % 2:
        raise UnsupportedModelError(
            f"cannot reorder {rows} projection rows for {n_heads} heads: expected an even "
            "head size that divides the rows"
        )
    tail = weight.shape[1:]
    # (heads, half, pair_member, ...) -> (heads, pair_member, half, ...)
    by_half = weight.reshape(n_heads, 2, head_dim // 2, *tail)
    return by_half.transpose(1, 2).reshape(rows, *tail)


def _layer_shape(spec: ShadowModelSpec) -> dict[str, int]:
    """Read head size and counts and the MLP width from the shadow layers themselves."""
    first = spec.shadow_layers[0]
    head_dim = int(first.self_attn.head_dim)
    shapes = []
    for layer in spec.shadow_layers:
        attn = layer.self_attn
        shapes.append(
            (
                attn.q_proj.weight.shape[0] // head_dim,
                attn.k_proj.weight.shape[0] // head_dim,
                layer.mlp.gate_proj.weight.shape[0],
                int(attn.head_dim),
            )
        )
    if len(set(shapes)) != 1:
        raise UnsupportedModelError(
            f"shadow layers differ in (heads, kv heads, MLP width, head size): {shapes}; "
            "a stock GGUF needs one shape for every layer"
        )
    n_heads, n_kv_heads, ffn, _ = shapes[0]
    return {"n_heads": n_heads, "n_kv_heads": n_kv_heads, "ffn": ffn, "head_dim": head_dim}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy()


def _output_weight(spec: ShadowModelSpec, embed: torch.Tensor) -> torch.Tensor | None:
    """Return the head as [vocab, d_shadow] with the projection folded in, None when tied."""
    head = spec.shadow_head
    if getattr(head, "bias", None) is not None:
        raise UnsupportedModelError(
            "the shadow head has a bias, which the stock llama.cpp architectures lack"
        )
    weight = head.weight.detach()
    if spec.projection is not None:
        projection = spec.projection
        if not isinstance(projection, nn.Linear) or projection.bias is not None:
            raise UnsupportedModelError(
                f"shadow projection {projection!r} is not a Linear without bias, so it "
                "cannot be folded into the head"
            )
        # [vocab, d_base] @ [d_base, d_shadow] in float64, so only the final cast rounds.
        folded = weight.double() @ projection.weight.detach().double()
        logger.info("folded the shadow projection into the head: %s", tuple(folded.shape))
        return folded.float()
    if weight.shape == embed.shape and torch.equal(weight, embed):
        return None
    return weight


def _model_tensors(
    spec: ShadowModelSpec, arch: gguf.MODEL_ARCH, shape: dict[str, int]
) -> list[tuple[str, np.ndarray]]:
    """Collect the GGUF tensors of the detached path, in llama.cpp's names and layout."""
    allowed = set(gguf.MODEL_TENSORS[arch])
    embed = spec.shadow_embed.weight.detach()
    tensors = [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight", embed)]

    for bid, layer in enumerate(spec.shadow_layers):
        for name, param in layer.named_parameters():
            module_path, _, kind = name.rpartition(".")
            tensor_kind = LAYER_TENSORS.get(module_path)
            if tensor_kind is None or tensor_kind not in allowed or kind not in ("weight", "bias"):
                raise UnsupportedModelError(
                    f"shadow layer {bid} parameter {name!r} has no tensor in llama.cpp's "
                    f"{arch.name.lower()} architecture"
                )
            if kind == "bias" and tensor_kind not in SUPPORTED_BIASES[arch]:
                raise UnsupportedModelError(
                    f"shadow layer {bid} has a bias {name!r} that llama.cpp's "
                    f"{arch.name.lower()} architecture does not read"
                )
            value = param.detach()
            if arch == gguf.MODEL_ARCH.LLAMA and module_path == "self_attn.q_proj":
                value = interleave_rope_rows(value, shape["n_heads"])
            elif arch == gguf.MODEL_ARCH.LLAMA and module_path == "self_attn.k_proj":
                value = interleave_rope_rows(value, shape["n_kv_heads"])
            tensors.append((gguf.TENSOR_NAMES[tensor_kind].format(bid=bid) + f".{kind}", value))

    tensors.append(
        (
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT_NORM] + ".weight",
            spec.shadow_norm.weight.detach(),
        )
    )
    output = _output_weight(spec, embed)
    if output is None:
        logger.info("shadow head equals the embeddings: output.weight omitted (tied)")
    else:
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight", output))

    rope_freqs = _rope_freq_factors(spec, arch, shape["head_dim"])
    if rope_freqs is not None:
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope_freqs))
    return [(name, _numpy(value)) for name, value in tensors]


def _check_stock_shape(spec: ShadowModelSpec) -> int:
    """Check that the detached path fits a stock decoder and return the shadow hidden size."""
    hidden = int(spec.shadow_norm.weight.shape[0])
    embed_rows, embed_width = spec.shadow_embed.weight.shape
    if embed_width != hidden:
        raise UnsupportedModelError(
            f"the shadow reads embeddings of width {embed_width} but its layers have hidden "
            f"size {hidden}, and a stock GGUF has one width. Leave the GGUF file out: the "
            "bundle's ONNX shadow graph runs this model."
        )
    if spec.shadow_embed_scale != 1.0:
        raise UnsupportedModelError(
            f"shadow embedding scale {spec.shadow_embed_scale} is not supported in a stock "
            f"{spec.shadow_config.model_type} GGUF"
        )
    head_rows = spec.shadow_head.weight.shape[0]
    if head_rows != embed_rows:
        raise UnsupportedModelError(
            f"shadow head has {head_rows} rows but the embedding has {embed_rows}; a stock "
            "GGUF needs one vocabulary size"
        )
    if len(spec.shadow_layers) == 0:
        raise UnsupportedModelError("the shadow has no decoder layers")
    return hidden


# --- hyperparameters ----------------------------------------------------------------------


def _rope_settings(config) -> dict[str, Any]:
    """Return the rope parameters of a transformers config (5.x dict or 4.x fields)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _rope_freq_factors(
    spec: ShadowModelSpec, arch: gguf.MODEL_ARCH, head_dim: int
) -> torch.Tensor | None:
    """Return llama.cpp's per-frequency divisors for Llama 3 rope scaling, else None.

    llama.cpp divides each rotary frequency by `rope_freqs[i]`, so the divisors are the
    unscaled frequencies over the ones transformers computed for the shadow.
    """
    rope = _rope_settings(spec.shadow_config)
    if rope["rope_type"] != "llama3":
        return None
    if arch != gguf.MODEL_ARCH.LLAMA:
        raise UnsupportedModelError(
            f"llama3 rope scaling in a {arch.name.lower()} model is not supported"
        )
    theta = float(rope["rope_theta"])
    unscaled = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    scaled = spec.shadow_rotary.inv_freq.detach().double().cpu()
    return (unscaled / scaled).float()


def _add_hyperparameters(
    writer: gguf.GGUFWriter, spec: ShadowModelSpec, shape: dict[str, int], hidden: int
) -> None:
    config = spec.shadow_config
    n_heads, head_dim = shape["n_heads"], shape["head_dim"]
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if context <= 0:
        raise UnsupportedModelError(
            f"shadow config max_position_embeddings={context!r}; expected a positive context length"
        )
    writer.add_name(f"{_model_name(spec)} detached shadow")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(len(spec.shadow_layers))
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(shape["n_kv_heads"])
    if head_dim != hidden // n_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(int(spec.shadow_embed.weight.shape[0]))

    rope = _rope_settings(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] not in ("default", "llama3"):
        raise UnsupportedModelError(
            f"rope type {rope['rope_type']!r} of the shadow is not supported by the GGUF writer; "
            "supported: default, linear, llama3"
        )
    attention_scaling = float(getattr(spec.shadow_rotary, "attention_scaling", 1.0))
    if attention_scaling != 1.0:
        raise UnsupportedModelError(
            f"rotary attention scaling {attention_scaling} is not supported by the GGUF writer"
        )

    writer.add_layer_norm_rms_eps(_rms_eps(spec))
    sliding_window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) and sliding_window and sliding_window < context:
        # NOTE: no sliding-window key is written, so llama.cpp attends to the whole context.
        logger.warning(
            "shadow config has a sliding window of %d tokens; llama.cpp attends to all %d "
            "positions, so outputs differ beyond the window",
            sliding_window,
            context,
        )


def _rms_eps(spec: ShadowModelSpec) -> float:
    """Return the one RMSNorm epsilon llama.cpp uses for every norm of the model."""
    norms = [spec.shadow_norm]
    for layer in spec.shadow_layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
    values = {float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0))) for norm in norms}
    if len(values) != 1:
        raise UnsupportedModelError(
            f"shadow norms use different epsilons {sorted(values)}; llama.cpp uses one"
        )
    return values.pop()


def _model_name(spec: ShadowModelSpec) -> str:
    source = getattr(spec.base_config, "_name_or_path", "") or ""
    return Path(source).name or spec.shadow_config.model_type


# --- tokenizer ----------------------------------------------------------------------------


def _load_tokenizer_json(tokenizer_dir: Path) -> dict[str, Any]:
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        raise ShadowEdgeError(
            f"{path} not found; pass the folder that contains the model's tokenizer.json "
            "(usually the base model folder)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ShadowEdgeError(
            f"{path} is not valid JSON ({exc}); save the tokenizer again"
        ) from exc
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or not _is_byte_level(data):
        kind = model.get("type")
        if model.get("byte_fallback"):
            kind = "BPE with byte fallback (SentencePiece style)"
        # NOTE: SentencePiece-style vocabularies (tokenizer.ggml.model "llama") need token
        # scores, which tokenizer.json does not carry, so they are not written yet.
        raise UnsupportedModelError(
            f"{path}: tokenizer model {kind} is not supported by the GGUF writer; expected a "
            "byte-level BPE tokenizer (GPT-2 style)"
        )
    return data


def _is_byte_level(data: dict[str, Any]) -> bool:
    return any(step.get("type") == "ByteLevel" for step in _steps(data.get("pre_tokenizer")))


def _steps(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Flatten a tokenizers `Sequence` pre-tokenizer into its steps."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [step for inner in component.get("pretokenizers", []) for step in _steps(inner)]
    return [component]


def tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    """Return the sha256 of the token ids the tokenizer gives for FINGERPRINT_TEXT."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    ids = tokenizer.encode(FINGERPRINT_TEXT, add_special_tokens=False).ids
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def pre_tokenizer_name(tokenizer_dir: Path, data: dict[str, Any] | None = None) -> str:
    """Name the llama.cpp pre-tokenizer whose split matches this tokenizer.json.

    Known tokenizers are recognized by their ids on FINGERPRINT_TEXT, the rest by the
    structure of their pre-tokenizer. An unknown one gets "default" and a warning, because
    llama.cpp then splits text in its own way and token ids can differ from the tokenizer's.
    """
    tokenizer_dir = Path(tokenizer_dir)
    data = data if data is not None else _load_tokenizer_json(tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    if fingerprint in KNOWN_TOKENIZER_FINGERPRINTS:
        return KNOWN_TOKENIZER_FINGERPRINTS[fingerprint]

    steps = _steps(data.get("pre_tokenizer"))
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        if steps[1].get("use_regex", True):
            return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PATTERN_PRE_TOKENIZERS:
            return SPLIT_PATTERN_PRE_TOKENIZERS[pattern]
    logger.warning(
        "%s: pre-tokenizer %s (fingerprint %s) is not one llama.cpp is known to match; "
        "writing tokenizer.ggml.pre = 'default', so llama.cpp may split text differently "
        "from the tokenizer",
        tokenizer_dir / "tokenizer.json",
        kinds,
        fingerprint[:16],
    )
    return "default"


def _token_table(data: dict[str, Any], n_vocab: int, path: Path) -> tuple[list[str], list[int]]:
    """Lay out tokens and their llama.cpp types by id, padding unused ids up to n_vocab."""
    tokens: list[str | None] = [None] * n_vocab
    types = [int(gguf.TokenType.NORMAL)] * n_vocab

    def place(text: str, token_id: int) -> None:
        if not 0 <= token_id < n_vocab:
            raise UnsupportedModelError(
                f"{path}: token {text!r} has id {token_id}, but the shadow embedding has "
                f"{n_vocab} rows; pass the tokenizer of this base model"
            )
        tokens[token_id] = text

    for text, token_id in data["model"]["vocab"].items():
        place(text, int(token_id))
    for added in data.get("added_tokens", []):
        token_id = int(added["id"])
        place(added["content"], token_id)
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        types[token_id] = int(kind)

    padded = 0
    for token_id, text in enumerate(tokens):
        if text is None:
            tokens[token_id] = f"[PAD{token_id}]"
            types[token_id] = int(gguf.TokenType.UNUSED)
            padded += 1
    if padded:
        logger.info("padded %d unused token ids up to the embedding's %d rows", padded, n_vocab)
    return tokens, types  # type: ignore[return-value]


def _added_special_tokens(tokenizer_dir: Path, bos_id: int | None, eos_id: int | None):
    """Return whether encoding adds BOS at the start and EOS at the end, as tokenizers does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    add_bos = bos_id is not None and len(full) > len(plain) and full[0] == bos_id
    add_eos = eos_id is not None and len(full) > len(plain) and full[-1] == eos_id
    return add_bos, add_eos


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer_dir: Path, n_vocab: int) -> None:
    data = _load_tokenizer_json(tokenizer_dir)
    tokens, types = _token_table(data, n_vocab, tokenizer_dir / "tokenizer.json")
    pre = pre_tokenizer_name(tokenizer_dir, data)
    logger.info("tokenizer: byte-level BPE, pre-tokenizer %r, %d ids", pre, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    # SpecialVocab reads merges, special token ids, add_*_token flags and the chat template
    # (tokenizer_config.json or chat_template.jinja) from the folder.
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise UnsupportedModelError(f"{tokenizer_dir / 'tokenizer.json'}: the BPE has no merges")
    # Where tokenizer_config.json sets no add_bos_token / add_eos_token, the flags follow
    # what the tokenizer's post-processor does.
    measured_bos, measured_eos = _added_special_tokens(
        tokenizer_dir, special.special_token_ids.get("bos"), special.special_token_ids.get("eos")
    )
    special.add_special_token.setdefault("bos", measured_bos)
    special.add_special_token.setdefault("eos", measured_eos)
    if special.chat_template is None:
        logger.warning("%s: no chat template found; the GGUF has none", tokenizer_dir)
    special.add_to_gguf(writer, quiet=True)


# --- files --------------------------------------------------------------------------------


def _tensor_data(
    name: str, value: np.ndarray, gguf_type: str
) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """Convert one tensor to the file's precision. Norms, biases and rope factors stay F32."""
    if value.ndim < 2 or name.startswith("rope_freqs"):
        return value.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = DIRECT_TYPES[gguf_type][0]
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if value.shape[-1] % block:
            logger.info(
                "%s: rows of %d values are not a multiple of %d; kept as F16",
                name,
                value.shape[-1],
                block,
            )
            return value.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(value, qtype), qtype


def _write_file(spec: ShadowModelSpec, tokenizer_dir: Path, out_path: Path, gguf_type: str) -> None:
    arch = gguf_architecture(spec.shadow_config)
    hidden = _check_stock_shape(spec)
    shape = _layer_shape(spec)
    tensors = _model_tensors(spec, arch, shape)

    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[arch])
    try:
        _add_hyperparameters(writer, spec, shape, hidden)
        writer.add_file_type(int(DIRECT_TYPES[gguf_type][1]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(writer, tokenizer_dir, int(spec.shadow_embed.weight.shape[0]))
        for name, value in tensors:
            data, qtype = _tensor_data(name, value, gguf_type)
            if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                writer.add_tensor(name, data)
            else:
                writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, out_path)
    logger.info(
        "wrote %s: %s, %d shadow layers, %d tensors, %s",
        out_path,
        gguf.MODEL_ARCH_NAMES[arch],
        len(spec.shadow_layers),
        len(tensors),
        gguf_type,
    )


def _quantize_with_llama_cpp(llama_cpp, source: Path, target: Path, gguf_type: str) -> None:
    """Quantize an F16 GGUF file with llama.cpp's quantizer (its own per-tensor type mix).

    llama.cpp stores a tensor whose rows do not fit the block size of the requested type in
    a fallback type (for k-quants, rows must be multiples of 256).
    """
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(LLAMA_CPP_TYPES[gguf_type])
    partial = target.with_name(target.name + ".partial")
    # llama-cpp-python prints llama.cpp's log to stderr when this logger's level allows it,
    # and the level is unset (one line per tensor) until a Llama is created. Version 0.3.36
    # maps ggml's INFO to WARNING and WARN to ERROR, so ERROR drops the per-tensor lines and
    # keeps llama.cpp's warnings, such as block-size fallbacks.
    native_logger = logging.getLogger("llama-cpp-python")
    previous_level = native_logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        native_logger.setLevel(max(previous_level, logging.ERROR))
    try:
        result = llama_cpp.llama_model_quantize(
            str(source).encode(), str(partial).encode(), ctypes.byref(params)
        )
    finally:
        native_logger.setLevel(previous_level)
    if result != 0:
        partial.unlink(missing_ok=True)
        raise ShadowEdgeError(
            f"llama.cpp failed to quantize {source} to {gguf_type} (return code {result}); "
            "its log above names the tensor, or pick f16 or q8_0"
        )
    os.replace(partial, target)
    logger.info(
        "quantized %s to %s with llama.cpp: tensor types %s",
        target,
        gguf_type,
        read_gguf_summary(target)["tensor_types"],
    )
