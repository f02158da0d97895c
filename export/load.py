"""Load a base model plus a shadow checkpoint with the library that trained it.

The library's own model does the loading (so its key names and defaults are the truth)
and stays attached to the spec as the reference for `verify`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from shadow_edge.checkpoint import AdapterInfo, Dialect, inspect_adapter
from shadow_edge.errors import CheckpointError, UnsupportedModelError
from shadow_edge.export.spec import (
    ShadowModelSpec,
    ShadowPeftInjection,
    ShadowPeftUpdate,
)

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def check_architecture(config, role: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{role} architecture {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def load_base_model(base: str | Path):
    """Load a causal LM in float32 from a folder or hub id."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(base)
    if not path.exists() and (str(base).startswith((".", "/", "~")) or path.suffix):
        raise CheckpointError(f"base model folder {base} not found")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"base model {base} is a file; pass the model folder")
    config = AutoConfig.from_pretrained(base)
    check_architecture(config, "base model")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.eval()
    return model


def _unwrap_layers(layers) -> nn.ModuleList:
    """Return the original decoder layers from under a library's wrappers."""
    inner = []
    for layer in layers:
        while hasattr(layer, "layer") and not hasattr(layer, "self_attn"):
            layer = layer.layer
        inner.append(layer)
    return nn.ModuleList(inner)


def _backbone(model):
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


def _safetensors_copy_of_pickle(adapter_dir: Path) -> Path:
    """Convert a legacy `shadow_adapter.pt` into a temporary safetensors checkpoint.

    shadow-peft itself would unpickle the file with full trust; here it is read with
    `weights_only=True`, which rejects anything but tensors and plain containers.
    """
    from safetensors.torch import save_file

    pickle_path = adapter_dir / "shadow_adapter.pt"
    try:
        state = torch.load(pickle_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError here
        raise CheckpointError(
            f"{pickle_path}: rejected: the pickle contains more than plain tensors ({exc}). "
            "Convert it to shadow_adapter.safetensors in a trusted environment."
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{pickle_path}: expected a dict of tensors")
    tmp = Path(tempfile.mkdtemp(prefix="shadow-edge-ckpt-"))
    for name in ("shadow_config.json", "shadow_modules.safetensors"):
        if (adapter_dir / name).is_file():
            shutil.copy(adapter_dir / name, tmp / name)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(tmp / "shadow_adapter.safetensors")
    )
    return tmp


@torch.no_grad()
def _shadow_peft_logits(reference, input_ids: torch.Tensor, detached: bool) -> torch.Tensor:
    reference.set_inference_mode("shadow_only" if detached else "base_shadow")
    return reference(input_ids=input_ids, use_cache=False).logits


def load_shadow_peft(base_model, info: AdapterInfo, shadow_model=None) -> ShadowModelSpec:
    from shadow_peft import ShadowForCausalLM

    try:
        reference = ShadowForCausalLM.from_pretrained(
            base_model, info.path, shadow_model=shadow_model
        )
    except RuntimeError as exc:  # strict load_state_dict reports missing and unexpected keys
        raise CheckpointError(
            f"{info.weights_file}: weights do not match the model: {exc}"
        ) from exc
    reference.eval()

    peft = reference.peft_model
    base = peft.base_model
    shadow = peft.shadow_model
    check_architecture(shadow.config, "shadow model")

    share_base = (not peft._explicit_shadow_model) or peft._explicit_share_base_embeddings
    shadow_embed = base.get_input_embeddings() if share_base else shadow.embed_tokens
    projection = peft.shadow_hidden_projection
    if isinstance(projection, nn.Identity):
        projection = None

    num_layers = len(_backbone(base).layers)
    inj, upd = peft.shadow_injection_model, peft.shadow_update_model
    injections = [
        ShadowPeftInjection(inj.injection_downs[k], inj.injection_ups[k], inj.alpha)
        for k in range(num_layers - 1)
    ]
    updates = [
        ShadowPeftUpdate(upd.hidden_norm, upd.update_gates[k], upd.update_transforms[k])
        for k in range(num_layers - 1)
    ]
    return ShadowModelSpec(
        dialect=Dialect.SHADOW_PEFT.value,
        base_config=base.config,
        shadow_config=shadow.config,
        base_embed=base.get_input_embeddings(),
        base_layers=_unwrap_layers(_backbone(base).layers),
        base_norm=_backbone(base).norm,
        base_rotary=_backbone(base).rotary_emb,
        base_head=base.get_output_embeddings(),
        shadow_embed=shadow_embed,
        shadow_layers=_unwrap_layers(shadow.layers),
        shadow_norm=shadow.norm,
        shadow_rotary=shadow.rotary_emb,
        shadow_head=reference.shadow_lm_head,
        projection=projection,
        adapted_layers=list(range(1, num_layers)),
        injections=injections,
        updates=updates,
        reference=reference,
        reference_logits=lambda ids, detached: _shadow_peft_logits(reference, ids, detached),
        adapter_settings=dict(info.settings),
        trained_shadow_head=info.has_trained_shadow_head,
    )


def load_peft(base_model, info: AdapterInfo, shadow_model=None) -> ShadowModelSpec:
    from shadow_edge.export.load_peft import load_peft_dialect

    return load_peft_dialect(base_model, info, shadow_model=shadow_model)


def load_model(base: str | Path, adapter: str | Path, shadow_model: str | Path | None = None):
    """Load base + adapter (either dialect) into a `ShadowModelSpec`, checking fit first."""
    # Importing shadow_peft registers its projected-shadow model type with AutoConfig.
    import shadow_peft  # noqa: F401
    from transformers import AutoConfig

    info = inspect_adapter(adapter)
    if shadow_model is not None and not Path(shadow_model).is_dir():
        raise CheckpointError(f"shadow model folder {shadow_model} not found")
    converted = None
    if info.weights_file.suffix == ".pt":
        converted = _safetensors_copy_of_pickle(info.path)
        info = inspect_adapter(converted)
    try:
        base_config = AutoConfig.from_pretrained(base) if Path(base).is_dir() else None
        if base_config is not None:
            check_architecture(base_config, "base model")
            info.check_against_base(base_config.to_dict(), base_name=str(base))
        base_model = load_base_model(base)
        if info.dialect is Dialect.PEFT:
            # peft builds the shadow itself from the folder named in its config.
            return load_peft(base_model, info, shadow_model=shadow_model)
        explicit = load_base_model(shadow_model) if shadow_model is not None else None
        return load_shadow_peft(base_model, info, shadow_model=explicit)
    finally:
        if converted is not None:
            shutil.rmtree(converted, ignore_errors=True)
