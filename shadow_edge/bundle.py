"""The bundle contract: file names, graph input/output names and the manifest.

The exporter writes a bundle and the runtime reads it; both take every name from here.
A bundle is a folder:

    manifest.json       format version, model, graphs and their I/O, files with sha256
    shadow.onnx         detached path: token ids -> s0, shadow logits, shadow KV cache
    backbone.onnx       base path: token ids + s0 -> logits, base KV cache
    *.onnx.data         each graph's weights (ONNX external data), which onnxruntime maps
                        from disk instead of copying them out of the graph file
    shadow.gguf         (optional) the detached shadow as a stock llama.cpp model
    tokenizer.json      and the other tokenizer files

The backbone cannot be a llama.cpp model, because llama.cpp has no shadow injection, so
combined mode always runs the ONNX graphs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadow_edge.errors import BundleError, ChecksumError
from shadow_edge.paths import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHADOW_GRAPH = "shadow.onnx"
BACKBONE_GRAPH = "backbone.onnx"
SHADOW_GGUF = "shadow.gguf"

# Graph inputs and outputs, named as in Hugging Face's ONNX LLM exports.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
# Positions (along the sequence) at which to compute logits. An empty list skips the LM
# head entirely, which is how combined mode avoids paying for shadow logits.
LOGITS_INDICES = "logits_indices"
SHADOW_HIDDEN = "shadow_hidden"
LOGITS = "logits"

PRECISIONS = ("fp32", "int8", "int4")
INT4_SCHEMES = ("affine", "symmetric")


def external_data_name(graph_file: str) -> str:
    """Return the name of the file that contains a graph's weights (ONNX external data)."""
    return graph_file + ".data"


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class CacheSpec:
    """Key/value cache of one graph: `num_layers` pairs of (B, kv_heads, P, head_dim)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    def past_names(self) -> list[str]:
        return [past_name(i, k) for i in range(self.num_layers) for k in ("key", "value")]

    def present_names(self) -> list[str]:
        return [present_name(i, k) for i in range(self.num_layers) for k in ("key", "value")]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle, per precision file."""

    files: dict[str, str]  # precision -> file name
    cache: CacheSpec
    inputs: list[str]
    outputs: list[str]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphSpec:
        return cls(
            files=dict(data["files"]),
            cache=CacheSpec(**data["cache"]),
            inputs=list(data["inputs"]),
            outputs=list(data["outputs"]),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to load and run a bundle, as stored in manifest.json."""

    format_version: int
    architecture: str
    hidden_size: int
    vocab_size: int
    context_length: int
    shadow: GraphSpec
    backbone: GraphSpec
    precisions: list[str]
    files: dict[str, str]  # file name -> sha256
    special_tokens: dict[str, Any]
    chat_template: str | None
    generation: dict[str, Any]
    source: dict[str, Any]
    gguf: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def graph_files(self, precision: str, graphs: tuple[str, ...] = ("shadow", "backbone")):
        """List the files the given graphs load at `precision`, each graph before its weights."""
        names = []
        for graph in graphs:
            name = getattr(self, graph).files[precision]
            names.append(name)
            if external_data_name(name) in self.files:
                names.append(external_data_name(name))
        return names

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["shadow"] = GraphSpec.from_dict(data["shadow"])
        values["backbone"] = GraphSpec.from_dict(data["backbone"])
        return cls(**values)


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> Manifest:
    """Read and check a bundle's manifest; with `verify_files`, check every sha256 too."""
    folder = Path(bundle_dir)
    if not folder.exists():
        raise BundleError(f"bundle folder {folder} not found")
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is a file; pass the bundle folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{folder}: no {MANIFEST}; this is not a shadow-edge bundle (or its export did "
            "not finish). Run `shadow-edge export` again."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from exc
    except PermissionError as exc:
        raise BundleError(f"{path}: cannot read file ({exc.strerror})") from exc
    version = data.get("format_version") if isinstance(data, dict) else None
    if not isinstance(version, int):
        raise BundleError(f"{path}: missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this shadow-edge "
            f"supports ({FORMAT_VERSION}); upgrade shadow-edge"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path}: incomplete manifest ({exc!r})") from exc

    for name, expected in manifest.files.items():
        file = folder / name
        if not file.is_file():
            raise BundleError(
                f"{folder}: {name} is listed in {MANIFEST} but missing. Export the bundle again."
            )
        if verify_files and sha256_file(file) != expected:
            raise ChecksumError(
                f"{file}: sha256 differs from {MANIFEST}; the file is corrupt or was changed. "
                "Export the bundle again."
            )
    return manifest
