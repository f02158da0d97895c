"""Read and check shadow adapter checkpoints without torch.

Two dialects exist: the `shadow-peft` library's (`shadow_config.json` plus
`shadow_adapter.safetensors`) and Hugging Face peft's ShadowPEFT tuner
(`adapter_config.json` with `peft_type: SHADOW` plus `adapter_model.safetensors`).
Everything here reads JSON and safetensors headers only, so a checkpoint that does not fit
its base fails in milliseconds, before any model is loaded.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadow_edge.errors import CheckpointError

logger = logging.getLogger(__name__)

SHADOW_PEFT_CONFIG = "shadow_config.json"
SHADOW_PEFT_WEIGHTS = ("shadow_adapter.safetensors", "shadow_adapter.pt")
SHADOW_PEFT_MODULES = "shadow_modules.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors",)


class Dialect(enum.Enum):
    SHADOW_PEFT = "shadow-peft"
    PEFT = "peft"


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Return {tensor name: {"dtype", "shape"}} from a safetensors file, checking its size."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({len(prefix)} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            size = path.stat().st_size
            if header_len > size - 8:
                raise CheckpointError(
                    f"{path}: corrupt safetensors file (header of {header_len} bytes in a file "
                    f"of {size} bytes)"
                )
            header = json.loads(f.read(header_len))
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read file ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file: {size} bytes, the header needs "
            f"{8 + header_len + data_end}. Copy the file again."
        )
    return {name: {"dtype": t["dtype"], "shape": t["shape"]} for name, t in header.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError as exc:
        raise CheckpointError(f"{path}: cannot read file ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


@dataclass
class AdapterInfo:
    """Contents of a checkpoint folder, read from its config and tensor headers."""

    path: Path
    dialect: Dialect
    settings: dict[str, Any]
    weights_file: Path
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def has_trained_shadow_head(self) -> bool:
        return "shadow_lm_head.weight" in self.modules

    def shape(self, name: str) -> list[int] | None:
        entry = self.tensors.get(name) or self.modules.get(name)
        return entry["shape"] if entry else None

    def check_against_base(self, base_config: dict[str, Any], base_name: str = "base") -> None:
        """Raise CheckpointError when the adapter was trained for another base model."""
        if self.dialect is Dialect.SHADOW_PEFT:
            _check_shadow_peft(self, base_config, base_name)
        else:
            _check_peft(self, base_config, base_name)


def _mismatch(what: str, adapter_value, base_value, info: AdapterInfo, base_name: str):
    return CheckpointError(
        f"adapter {info.path} does not fit base {base_name}: {what} is {adapter_value} in the "
        f"adapter but {base_value} in the base. Pass the base model the adapter was trained on."
    )


def _check_shadow_peft(info: AdapterInfo, base: dict[str, Any], base_name: str) -> None:
    hidden = base.get("hidden_size")
    layers = base.get("num_hidden_layers")
    vocab = base.get("vocab_size")

    downs = info.shape("shadow_injection_model.injection_downs")
    if downs is None:
        raise CheckpointError(
            f"{info.weights_file}: missing tensor shadow_injection_model.injection_downs; "
            "this is not a shadow-peft adapter checkpoint"
        )
    if layers is not None and downs[0] != layers - 1:
        raise _mismatch("decoder layer count", downs[0] + 1, layers, info, base_name)
    if hidden is not None and downs[1] != hidden:
        raise _mismatch("hidden size", downs[1], hidden, info, base_name)
    if downs[2] != info.settings.get("injection_hidden_size", downs[2]):
        raise CheckpointError(
            f"{info.weights_file}: injection_downs has rank {downs[2]} but "
            f"{SHADOW_PEFT_CONFIG} says injection_hidden_size="
            f"{info.settings['injection_hidden_size']}"
        )
    ups = info.shape("shadow_injection_model.injection_ups")
    if ups is None or ups != [downs[0], downs[2], downs[1]]:
        raise CheckpointError(
            f"{info.weights_file}: injection_ups has shape {ups}, expected "
            f"{[downs[0], downs[2], downs[1]]}"
        )
    gate = info.shape("shadow_update_model.update_gates.0.0.weight")
    if gate is not None and gate[0] != info.settings.get("gate_hidden_size", gate[0]):
        raise CheckpointError(
            f"{info.weights_file}: update gates have width {gate[0]} but {SHADOW_PEFT_CONFIG} "
            f"says gate_hidden_size={info.settings['gate_hidden_size']}"
        )

    for head in ("shadow_lm_head.weight", "lm_head.weight"):
        shape = info.shape(head)
        if shape is not None and vocab is not None and shape[0] != vocab:
            raise _mismatch(f"vocabulary size ({head})", shape[0], vocab, info, base_name)

    has_qk_norm = any(".self_attn.q_norm." in name for name in info.tensors)
    model_type = base.get("model_type")
    shadow_keys = [n for n in info.tensors if n.startswith("shadow_model.layers.")]
    if shadow_keys and model_type in ("llama", "mistral", "qwen2") and has_qk_norm:
        raise _mismatch("architecture", "qwen3 (q/k norms)", model_type, info, base_name)


def _check_peft(info: AdapterInfo, base: dict[str, Any], base_name: str) -> None:
    hidden = base.get("hidden_size")
    # peft 0.21 keeps the adapter name in these keys:
    # `base_model.model.model.layers.3.shadow_down.default.weight`.
    downs = [n for n in info.tensors if ".shadow_down." in n and n.endswith(".weight")]
    if not downs:
        raise CheckpointError(
            f"{info.weights_file}: no shadow_down weights found; this is not a peft "
            "ShadowPEFT adapter"
        )
    shape = info.tensors[downs[0]]["shape"]
    if hidden is not None and shape[1] != hidden:
        raise _mismatch("hidden size", shape[1], hidden, info, base_name)
    layers = base.get("num_hidden_layers")
    indices = set()
    for name in downs:
        parts = name.split(".")
        if "layers" in parts:
            indices.add(int(parts[parts.index("layers") + 1]))
    if layers is not None and indices and max(indices) >= layers:
        raise _mismatch("decoder layer index", max(indices), f"{layers} layers", info, base_name)

    vocab = base.get("vocab_size")
    if vocab is None:
        return
    # A mirror shadow is built from the base config, so its own embedding table (kept when it
    # does not share the base one) has the base vocabulary. A separate shadow model can have
    # another vocabulary size, so its table is not checked here.
    mirror = info.settings.get("shadow_model", "mirror") == "mirror"
    for name, entry in info.tensors.items():
        is_head = name.endswith("lm_head.weight")
        is_shadow_embed = ".shadow_backbone." in name and name.endswith("embed_tokens.weight")
        if (is_head or (mirror and is_shadow_embed)) and entry["shape"][0] != vocab:
            raise _mismatch(f"vocabulary size ({name})", entry["shape"][0], vocab, info, base_name)


def inspect_adapter(path: str | Path) -> AdapterInfo:
    """Detect a checkpoint's dialect and read its settings and tensor shapes."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"adapter folder {folder} not found")
    if not folder.is_dir():
        raise CheckpointError(f"adapter {folder} is a file; pass the checkpoint folder")

    if (folder / SHADOW_PEFT_CONFIG).is_file():
        settings = _read_json(folder / SHADOW_PEFT_CONFIG)
        weights = next((folder / n for n in SHADOW_PEFT_WEIGHTS if (folder / n).is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"{folder}: no adapter weights; expected one of {', '.join(SHADOW_PEFT_WEIGHTS)}"
            )
        info = AdapterInfo(folder, Dialect.SHADOW_PEFT, settings, weights)
        if weights.suffix == ".safetensors":
            info.tensors = read_safetensors_header(weights)
        if (folder / SHADOW_PEFT_MODULES).is_file():
            info.modules = read_safetensors_header(folder / SHADOW_PEFT_MODULES)
        return info

    if (folder / PEFT_CONFIG).is_file():
        settings = _read_json(folder / PEFT_CONFIG)
        peft_type = str(settings.get("peft_type", ""))
        if peft_type.upper() != "SHADOW":
            raise CheckpointError(
                f"{folder / PEFT_CONFIG}: peft_type is {peft_type!r}; only ShadowPEFT adapters "
                "(peft_type SHADOW) can be exported"
            )
        weights = next((folder / n for n in PEFT_WEIGHTS if (folder / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{folder}: no adapter weights; expected {PEFT_WEIGHTS[0]}")
        info = AdapterInfo(folder, Dialect.PEFT, settings, weights)
        info.tensors = read_safetensors_header(weights)
        return info

    raise CheckpointError(
        f"{folder}: not a shadow adapter checkpoint; expected {SHADOW_PEFT_CONFIG} (shadow-peft) "
        f"or {PEFT_CONFIG} (peft)"
    )
