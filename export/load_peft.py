"""Load a Hugging Face peft ShadowPEFT adapter (`peft_type: SHADOW`) into a `ShadowModelSpec`.

peft itself builds and loads the model, so its key names, defaults and wrapping rules are the
truth; this module only reads the loaded modules. What peft 0.21 computes, per token position:

- `s0 = P(shadow_backbone(x).last_hidden_state)`: the shadow backbone output after its final
  norm, through the projection P (identity when the widths match).
- Every wrapped decoder block i, layer 0 included, with its input `h` and state `s`:
  injection `h = h + alpha * up(down(h - s))` (dropout before `down` only in training), then
  the block, then with its output `h` the update `s = (1 - g) * s + g * T(h)`, where
  `g = sigmoid(G(h))` and T, G are Linear -> GELU -> Linear with biases.
- Blocks outside the wrapped range run plain. The state enters at the first wrapped block
  and is dropped after the last one.
- `unload_shadow()` (the detached model) returns `head(P(shadow_backbone(x)))`, where the head
  is the base model's LM head (a trained copy when `lm_head` is in `modules_to_save`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from shadow_edge.checkpoint import PEFT_CONFIG, AdapterInfo, Dialect
from shadow_edge.errors import CheckpointError, UnsupportedModelError
from shadow_edge.export.load import check_architecture
from shadow_edge.export.spec import PeftInjection, PeftUpdate, ShadowModelSpec

logger = logging.getLogger(__name__)

MIRROR = "mirror"


def load_peft_dialect(base_model, info: AdapterInfo, shadow_model=None) -> ShadowModelSpec:
    """Load `info.path` onto `base_model` with peft and describe it as a `ShadowModelSpec`.

    `shadow_model` replaces the adapter's `shadow_model` path for adapters built on a separate
    shadow model: a folder, or a loaded transformers model whose `name_or_path` is that folder.
    peft wraps `base_model` in place, so pass a model that nothing else uses.
    """
    config = _read_config(info, shadow_model)
    reference = _load_reference(base_model, info, config)
    tuner = reference.base_model
    adapter = tuner.active_adapters[0]
    causal_lm = reference.get_base_model()
    decoder = _decoder(causal_lm, "base model")
    _check_wrapped_modules(reference, decoder)

    adapted, injections, updates = _block_adapters(decoder.layers, adapter)
    backbone = tuner.shadow_backbone[adapter]
    check_architecture(backbone.config, "shadow model")
    shadow_decoder = _decoder(backbone, "shadow model")

    base_embed = _saved_copy(causal_lm.get_input_embeddings())
    base_head = causal_lm.get_output_embeddings()
    trained_head = isinstance(base_head, _modules_to_save_wrapper())
    base_head = _saved_copy(base_head)

    # peft deletes the backbone's own table exactly when it feeds it the base embeddings.
    own_embed = getattr(shadow_decoder, "embed_tokens", None)
    shadow_embed = own_embed if isinstance(own_embed, nn.Module) else base_embed
    _check_shadow_vocab(shadow_embed, causal_lm.config, info)

    projection = tuner.shadow_projection[adapter]
    if isinstance(projection, nn.Identity):
        projection = None

    logger.info(
        "loaded peft ShadowPEFT adapter %s: %s shadow with %d layers, adapted base layers %d-%d",
        info.path,
        config.shadow_model,
        len(shadow_decoder.layers),
        adapted[0],
        adapted[-1],
    )
    return ShadowModelSpec(
        dialect=Dialect.PEFT.value,
        base_config=causal_lm.config,
        shadow_config=backbone.config,
        base_embed=base_embed,
        base_layers=nn.ModuleList(_block_of(layer) for layer in decoder.layers),
        base_norm=_saved_copy(decoder.norm),
        base_rotary=decoder.rotary_emb,
        base_head=base_head,
        shadow_embed=shadow_embed,
        shadow_layers=nn.ModuleList(shadow_decoder.layers),
        shadow_norm=shadow_decoder.norm,
        shadow_rotary=shadow_decoder.rotary_emb,
        # peft's detached model applies the base LM head to the shadow state.
        shadow_head=base_head,
        projection=projection,
        adapted_layers=adapted,
        injections=injections,
        updates=updates,
        reference=reference,
        reference_logits=_reference_logits(reference),
        adapter_settings=dict(info.settings),
        trained_shadow_head=trained_head,
    )


def _reference_logits(reference):
    """Return peft's own forward: the combined model, or `unload_shadow()` when detached."""
    import torch

    detached_model = reference.base_model.unload_shadow()

    @torch.no_grad()
    def forward(input_ids, detached: bool):
        model = detached_model if detached else reference
        return model(input_ids=input_ids, use_cache=False).logits

    return forward


def _read_config(info: AdapterInfo, shadow_model):
    """Read the adapter's ShadowConfig and point it at a local shadow model folder."""
    from peft import PeftConfig, PeftType, TaskType

    config_path = info.path / PEFT_CONFIG
    try:
        config = PeftConfig.from_pretrained(str(info.path))
    except (TypeError, ValueError) as exc:  # unknown or invalid config fields
        raise CheckpointError(f"{config_path}: invalid peft adapter config ({exc})") from exc
    if config.peft_type != PeftType.SHADOW:
        raise CheckpointError(
            f"{config_path}: peft_type is {config.peft_type}; only ShadowPEFT adapters "
            "(peft_type SHADOW) can be exported"
        )
    if config.task_type != TaskType.CAUSAL_LM:
        raise UnsupportedModelError(
            f"{config_path}: task_type is {config.task_type!r}; only CAUSAL_LM adapters can be "
            "exported, because only they have a language-model head on the shadow path. If the "
            "adapter was trained for text generation, set task_type to CAUSAL_LM in that file."
        )

    if shadow_model is not None:
        if config.shadow_model == MIRROR:
            raise CheckpointError(
                f"{config_path}: the adapter builds its shadow as a mirror of the base model, so "
                f"it takes no separate shadow model (got {_shadow_model_name(shadow_model)}). "
                "Leave the shadow model unset."
            )
        config.shadow_model = _shadow_model_name(shadow_model)
    if config.shadow_model != MIRROR and not Path(config.shadow_model).is_dir():
        # peft would try the model hub for a name that is not a local folder.
        raise CheckpointError(
            f"{config_path}: shadow_model {config.shadow_model!r} is not a local folder. Pass the "
            "folder of that shadow model as the shadow model."
        )
    return config


def _shadow_model_name(shadow_model) -> str:
    if isinstance(shadow_model, (str, Path)):
        return str(shadow_model)
    name = getattr(shadow_model, "name_or_path", "")
    if not name:
        raise CheckpointError(
            f"the shadow model {type(shadow_model).__name__} has no name_or_path; pass its folder"
        )
    return str(name)


def _load_reference(base_model, info: AdapterInfo, config):
    """Load the adapter with peft and check that the file held every adapter tensor."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    try:
        reference = PeftModel.from_pretrained(base_model, str(info.path), config=config)
    except RuntimeError as exc:  # load_state_dict reports tensors of the wrong shape
        raise CheckpointError(
            f"{info.weights_file}: weights do not match the model: {exc}"
        ) from exc
    except ValueError as exc:  # peft rejects targets or a projection that do not fit the base
        raise CheckpointError(f"{info.path}: peft could not load the adapter: {exc}") from exc
    reference.eval()

    # peft loads adapter weights with strict=False, so a missing tensor would stay at its
    # initial value without an error.
    expected = set(get_peft_model_state_dict(reference))
    found = set(info.tensors)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{info.weights_file}: weights do not match the adapter config: "
            f"{len(missing)} missing ({', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}). "
            "Save the adapter again with peft's save_pretrained."
        )
    return reference


def _decoder(model: nn.Module, role: str) -> nn.Module:
    """Return the module that contains `layers`, `norm` and `rotary_emb` (e.g. `LlamaModel`)."""
    inner = getattr(model, "model", model)
    missing = [name for name in ("layers", "norm", "rotary_emb") if not hasattr(inner, name)]
    if missing:
        raise UnsupportedModelError(
            f"{role} {type(model).__name__} has no {', '.join(missing)}; the exporter supports "
            "Llama-style decoders (llama, mistral, qwen2, qwen3)"
        )
    return inner


def _modules_to_save_wrapper():
    from peft.utils.other import ModulesToSaveWrapper

    return ModulesToSaveWrapper


def _saved_copy(module: nn.Module) -> nn.Module:
    """Return the active trained copy of a `modules_to_save` module, else the module itself."""
    if isinstance(module, _modules_to_save_wrapper()):
        if module.active_adapters:
            return module.modules_to_save[module.active_adapters[0]]
        return module.original_module
    return module


def _block_of(layer: nn.Module) -> nn.Module:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(layer, BaseTunerLayer):
        return layer.get_base_layer()
    return _saved_copy(layer)


def _check_wrapped_modules(reference, decoder: nn.Module) -> None:
    """Raise UnsupportedModelError for peft wrappers the graphs cannot express."""
    from peft.tuners.shadow.layers import ShadowLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    blocks = {id(layer) for layer in decoder.layers}
    top_level = {id(m) for m in (decoder.embed_tokens, decoder.norm)}
    top_level.add(id(reference.get_base_model().get_output_embeddings()))
    for name, module in reference.named_modules():
        if isinstance(module, ShadowLayer) and id(module) not in blocks:
            raise UnsupportedModelError(
                f"the adapter wraps {name} ({type(module.get_base_layer()).__name__}); the "
                "exporter supports ShadowPEFT on whole decoder blocks only (target_modules like "
                "'model.layers.0')"
            )
        if isinstance(module, AuxiliaryTrainingWrapper):
            supported = isinstance(module, _modules_to_save_wrapper()) and (
                id(module) in top_level or id(module) in blocks
            )
            if not supported:
                raise UnsupportedModelError(
                    f"the adapter trains {name} ({type(module).__name__}); the exporter supports "
                    "modules_to_save on the LM head, input embeddings, final norm or whole "
                    "decoder blocks only"
                )


def _block_adapters(layers: nn.ModuleList, adapter: str):
    """Return the adapted block indices and one injection and one update module per block."""
    from peft.tuners.shadow.layers import ShadowLayer

    adapted, injections, updates = [], [], []
    for i, layer in enumerate(layers):
        if not isinstance(layer, ShadowLayer) or adapter not in layer.shadow_down:
            continue
        adapted.append(i)
        down, up = layer.shadow_down[adapter], layer.shadow_up[adapter]
        injections.append(PeftInjection(down, up, layer.shadow_alpha[adapter]))
        gate, transform = layer.shadow_update_gate[adapter], layer.shadow_update_transform[adapter]
        updates.append(PeftUpdate(gate, transform))

    if not adapted:
        raise UnsupportedModelError(
            f"the adapter wraps none of the {len(layers)} decoder blocks; set target_modules to "
            "decoder blocks such as 'model.layers.0'"
        )
    if adapted != list(range(adapted[0], adapted[-1] + 1)):
        # peft's own forward fails here too: an unwrapped block receives the shadow carrier.
        raise UnsupportedModelError(
            f"the adapter wraps decoder blocks {adapted}, which are not contiguous; peft and the "
            "exporter support one contiguous range of blocks"
        )
    return adapted, injections, updates


def _check_shadow_vocab(shadow_embed: nn.Module, base_config, info: AdapterInfo) -> None:
    rows = shadow_embed.num_embeddings
    if rows < base_config.vocab_size:
        raise CheckpointError(
            f"{info.path}: the shadow embedding has {rows} rows but the base vocabulary has "
            f"{base_config.vocab_size} tokens; use a shadow model with the base model's tokenizer"
        )
