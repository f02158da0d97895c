"""`shadow-edge export`: base model + shadow checkpoint in, a bundle folder out.

Stages run in a fixed order (check output, check adapter against base, load, trace graphs,
quantize, GGUF, tokenizer, manifest) inside a temporary folder next to the output. The
folder is renamed into place only when every file and the manifest are written, so an
interrupted export never leaves something that looks like a bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from shadow_edge import bundle
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.paths import sha256_file

logger = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
DEFAULT_MAX_NEW_TOKENS = 256


def _known_bundle_files(folder: Path) -> set[str]:
    """Return the names an earlier export may have written into `folder`."""
    known = {bundle.MANIFEST, bundle.SHADOW_GGUF, *TOKENIZER_FILES}
    for graph in ("shadow", "backbone"):
        for name in (f"{graph}.onnx", *(f"{graph}.{p}.onnx" for p in bundle.PRECISIONS)):
            known.update((name, bundle.external_data_name(name)))
    manifest = folder / bundle.MANIFEST
    if manifest.is_file():
        try:
            known.update(json.loads(manifest.read_text()).get("files", {}))
        except json.JSONDecodeError:
            logger.warning("%s is not valid JSON; using the standard bundle file names", manifest)
    return known


def check_output(out: Path, force: bool) -> None:
    """Reject an existing output unless `force`, and never replace foreign files."""
    if not out.exists():
        if not out.parent.exists():
            raise ShadowEdgeError(f"output parent folder {out.parent} does not exist")
        return
    if not out.is_dir():
        raise ShadowEdgeError(f"output {out} exists and is a file; choose another path")
    if not force:
        raise ShadowEdgeError(
            f"output folder {out} already exists; pass --force to replace the bundle in it, "
            "or choose another path"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _known_bundle_files(out))
    if foreign:
        raise ShadowEdgeError(
            f"output folder {out} contains files that are not part of a bundle "
            f"({', '.join(foreign[:5])}); --force only replaces bundles. Choose another path."
        )


@contextmanager
def staging_folder(out: Path):
    """Yield a temporary folder beside `out`; move it into place only on success."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    # mkdtemp makes the folder private (0700); a bundle is meant to be shared and read.
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        # KeyboardInterrupt and full disks included: nothing half-written stays behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _tokenizer_dir(base: str | Path) -> Path:
    path = Path(base)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(base), allow_patterns=list(TOKENIZER_FILES)))


def _copy_tokenizer(source: Path, target: Path) -> list[str]:
    if not (source / "tokenizer.json").is_file():
        raise ShadowEdgeError(
            f"{source}: no tokenizer.json; the runtime needs a fast tokenizer file. Save the "
            "tokenizer with transformers (tokenizer.save_pretrained) into the base folder."
        )
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
            copied.append(name)
    return copied


def _special_tokens(source: Path, config) -> tuple[dict, str | None, dict]:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = GenerationConfig.from_model_config(config)
    eos = generation.eos_token_id if generation.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    special = {
        "bos_token": tokenizer.bos_token,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token": tokenizer.eos_token,
        "eos_token_ids": eos_ids,
        "pad_token_id": tokenizer.pad_token_id,
        "unk_token_id": tokenizer.unk_token_id,
        # Whether encoding a plain prompt should start with BOS (Llama 2 style tokenizers).
        "add_bos_token": bool(getattr(tokenizer, "add_bos_token", False)),
    }
    defaults = {
        "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
        "temperature": float(generation.temperature or 1.0) if generation.do_sample else 0.0,
        "top_k": int(generation.top_k or 0) if generation.do_sample else 0,
        "top_p": float(generation.top_p or 1.0) if generation.do_sample else 1.0,
        "repetition_penalty": float(generation.repetition_penalty or 1.0),
    }
    return special, tokenizer.chat_template, defaults


def context_length(config, requested: int | None) -> int:
    """Return the maximum sequence length: the model's limit, within its sliding window."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 0) or 4096
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True)
    if window and uses_window:
        # Full attention equals sliding attention while the sequence fits the window.
        limit = min(limit, int(window))
    if requested is not None:
        if requested < 1 or requested > limit:
            raise ShadowEdgeError(f"--context-length must be in 1..{limit}, got {requested}")
        limit = requested
    return limit


def export_bundle(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    shadow_model: str | Path | None = None,
    precisions: Sequence[str] = ("fp32",),
    int4_block_size: int = 32,
    int4_scheme: str = "affine",
    gguf_type: str | None = None,
    context: int | None = None,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> Path:
    """Export a bundle and return its folder."""
    from shadow_edge.export import onnx_export, quantize
    from shadow_edge.export.load import load_model

    out = Path(out).expanduser().resolve()
    unknown = [p for p in precisions if p not in bundle.PRECISIONS]
    if unknown or not precisions:
        raise ShadowEdgeError(
            f"unknown precision {unknown or precisions}; choose from {', '.join(bundle.PRECISIONS)}"
        )
    if "int4" in precisions and (int4_block_size < 16 or int4_block_size & (int4_block_size - 1)):
        raise ShadowEdgeError(
            f"--int4-block-size must be a power of two >= 16, got {int4_block_size}. "
            "Use 16, 32, 64 or 128."
        )
    if "int4" in precisions and int4_scheme not in bundle.INT4_SCHEMES:
        raise ShadowEdgeError(
            f"unknown --int4-scheme {int4_scheme!r}; choose from {', '.join(bundle.INT4_SCHEMES)}"
        )
    if gguf_type is not None:
        from shadow_edge.export.gguf import SUPPORTED_GGUF_TYPES

        if gguf_type not in SUPPORTED_GGUF_TYPES:
            raise ShadowEdgeError(
                f"unknown GGUF type {gguf_type!r}; choose from {', '.join(SUPPORTED_GGUF_TYPES)}"
            )
    check_output(out, force)

    def stage(name: str) -> None:
        logger.info("%s", name)
        if on_stage is not None:
            on_stage(name)

    stage("loading base model and adapter")
    spec = load_model(base, adapter, shadow_model=shadow_model)
    ctx = context_length(spec.base_config, context)

    with staging_folder(out) as tmp:
        stage("tracing shadow graph")
        fp32_shadow, fp32_backbone = tmp / "shadow.onnx", tmp / "backbone.onnx"
        shadow_cache = onnx_export.export_shadow_graph(spec, fp32_shadow)
        stage("tracing backbone graph")
        backbone_cache = onnx_export.export_backbone_graph(spec, fp32_backbone)

        graph_files: dict[str, dict[str, str]] = {"shadow": {}, "backbone": {}}
        int4_fallback = 0  # MatMuls left symmetric by the affine scheme
        for precision in precisions:
            for graph, source in (("shadow", fp32_shadow), ("backbone", fp32_backbone)):
                if precision == "fp32":
                    graph_files[graph]["fp32"] = source.name
                    continue
                stage(f"quantizing {graph} graph to {precision}")
                target = tmp / f"{graph}.{precision}.onnx"
                if precision == "int8":
                    quantize.quantize_int8(source, target)
                else:
                    int4_fallback += quantize.quantize_int4(
                        source, target, block_size=int4_block_size, scheme=int4_scheme
                    )
                graph_files[graph][precision] = target.name
        if "fp32" not in precisions:
            for source in (fp32_shadow, fp32_backbone):
                source.unlink()
                source.with_name(bundle.external_data_name(source.name)).unlink()

        tokenizer_source = _tokenizer_dir(base)
        gguf_info = None
        if gguf_type is not None:
            from shadow_edge.export.gguf import write_shadow_gguf

            stage(f"writing {bundle.SHADOW_GGUF} ({gguf_type})")
            write_shadow_gguf(spec, tokenizer_source, tmp / bundle.SHADOW_GGUF, gguf_type)
            gguf_info = {"file": bundle.SHADOW_GGUF, "type": gguf_type, "mode": "detached"}

        stage("copying tokenizer and writing manifest")
        _copy_tokenizer(tokenizer_source, tmp)
        special, chat_template, defaults = _special_tokens(tokenizer_source, spec.base_config)
        manifest = _build_manifest(
            spec,
            tmp,
            graph_files,
            shadow_cache,
            backbone_cache,
            ctx,
            special,
            chat_template,
            defaults,
            gguf_info,
            base,
            adapter,
            shadow_model,
            (int4_block_size, int4_scheme, int4_fallback),
        )
        (tmp / bundle.MANIFEST).write_text(manifest.to_json())
    return out


def _graph_spec(files, cache, with_shadow_input: bool) -> bundle.GraphSpec:
    cache_spec = bundle.CacheSpec(cache.layers, cache.kv_heads, cache.head_dim)
    inputs = [bundle.INPUT_IDS]
    if with_shadow_input:
        inputs.append(bundle.SHADOW_HIDDEN)
    inputs += [bundle.ATTENTION_MASK, bundle.POSITION_IDS, bundle.LOGITS_INDICES]
    outputs = [] if with_shadow_input else [bundle.SHADOW_HIDDEN]
    outputs.append(bundle.LOGITS)
    return bundle.GraphSpec(
        files=files,
        cache=cache_spec,
        inputs=inputs + cache_spec.past_names(),
        outputs=outputs + cache_spec.present_names(),
    )


def _build_manifest(
    spec,
    folder,
    graph_files,
    shadow_cache,
    backbone_cache,
    ctx,
    special,
    chat_template,
    defaults,
    gguf_info,
    base,
    adapter,
    shadow_model,
    int4_settings,
) -> bundle.Manifest:
    import shadow_edge

    files = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != bundle.MANIFEST
    }
    precisions = sorted(graph_files["shadow"], key=bundle.PRECISIONS.index)
    notes = [
        "combined mode runs shadow and backbone ONNX graphs; llama.cpp cannot run the backbone "
        "because it has no shadow injection",
    ]
    if gguf_info:
        notes.append(f"{bundle.SHADOW_GGUF} is the detached shadow as a stock llama.cpp model")
    block_size, scheme, fallback = int4_settings
    if "int4" in precisions and fallback:
        note = (
            f"int4: {fallback} MatMuls have an input size that is not a multiple of the block "
            f"size {block_size}, so they use symmetric blocks instead of {scheme} ones"
        )
        logger.warning("%s. A smaller --int4-block-size avoids this.", note)
        notes.append(note)
    return bundle.Manifest(
        format_version=bundle.FORMAT_VERSION,
        architecture=spec.base_config.model_type,
        hidden_size=int(spec.base_config.hidden_size),
        vocab_size=int(spec.base_config.vocab_size),
        context_length=ctx,
        shadow=_graph_spec(graph_files["shadow"], shadow_cache, with_shadow_input=False),
        backbone=_graph_spec(graph_files["backbone"], backbone_cache, with_shadow_input=True),
        precisions=precisions,
        files=files,
        special_tokens=special,
        chat_template=chat_template,
        generation=defaults,
        source={
            "base": str(base),
            "adapter": str(adapter),
            "shadow_model": str(shadow_model) if shadow_model else None,
            "dialect": spec.dialect,
            "adapter_settings": spec.adapter_settings,
            "num_base_layers": spec.num_base_layers,
            "num_shadow_layers": spec.num_shadow_layers,
            "adapted_layers": spec.adapted_layers,
            "trained_shadow_head": spec.trained_shadow_head,
            "int4_block_size": block_size if "int4" in precisions else None,
            "int4_scheme": scheme if "int4" in precisions else None,
            "exporter": f"shadow-edge {shadow_edge.__version__}",
        },
        gguf=gguf_info,
        notes=notes,
    )
