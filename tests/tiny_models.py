"""Tiny random models and adapters, built in code, for fast tests of every architecture."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# A small word-level vocabulary keeps tiny models fast; the special tokens mirror ChatML.
SPECIAL_TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "the a to in of on off turn light lights fan heater kitchen bedroom room set please "
    "it is at and what time hello hi user assistant system you are help json intent"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ARCHITECTURES = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3"),
}


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    for i in range(len(vocab), vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def make_config(arch: str, **overrides):
    from transformers import AutoConfig

    settings = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch == "qwen3":
        settings["head_dim"] = 16  # differs from hidden / heads = 12
    settings.update(overrides)
    model_type = ARCHITECTURES[arch]["model_type"]
    return AutoConfig.for_model(model_type, **settings)


def make_base(folder: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a tiny random causal LM with a tokenizer to `folder`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = make_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    save_tokenizer(folder, config.vocab_size)
    return folder


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add noise to every parameter so zero-initialized adapter parts do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def make_shadow_peft_adapter(
    folder: Path,
    base_dir: Path,
    seed: int = 0,
    shadow_model_dir: Path | None = None,
    train_shadow_head: bool = False,
    scale: float = 0.2,
    **settings,
) -> Path:
    """Save a perturbed shadow-peft adapter (non-zero injection, update and projection).

    `scale` is the noise's standard deviation: large for tiny models, small where the
    adapted model should stay close to a real base's confident predictions.
    """
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    explicit = AutoModelForCausalLM.from_pretrained(shadow_model_dir) if shadow_model_dir else None
    defaults = dict(
        num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=8, alpha=0.5, dropout=0.0
    )
    defaults.update(settings)
    if train_shadow_head:
        defaults["modules_to_save"] = ["shadow_lm_head"]
    peft = get_shadow_model(base, ShadowConfig(**defaults), shadow_model=explicit)
    model = ShadowForCausalLM(peft)
    perturb_(peft.shadow_injection_model, seed + 1, scale=scale)
    perturb_(peft.shadow_update_model, seed + 2, scale=scale)
    perturb_(peft.shadow_hidden_projection, seed + 3, scale=scale)
    if train_shadow_head:
        perturb_(model.shadow_lm_head, seed + 4, scale=scale)
    model.save_pretrained(folder)
    return folder


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# Split patterns of two common byte-level BPE tokenizers, so tests can check that a GGUF
# names the pre-tokenizer llama.cpp needs: Qwen2/Qwen3 split digits one by one, Llama 3 in
# groups of up to three.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def save_bpe_tokenizer(folder: Path, vocab_size: int, style: str = "gpt2") -> None:
    """Train and save a small byte-level BPE tokenizer that llama.cpp can load.

    `style` picks the pre-tokenizer: "gpt2" (plain byte-level split), "qwen2" or "llama3"
    (a regex split before a byte-level step without its own regex). The vocabulary contains
    the ChatML special tokens, the 256 byte symbols and merges learned from the tiny words,
    at most `vocab_size` entries in all.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif style in ("qwen2", "llama3"):
        pattern = QWEN2_SPLIT_PATTERN if style == "qwen2" else LLAMA3_SPLIT_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(f"unknown tokenizer style {style!r}; expected gpt2, qwen2 or llama3")
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Numbers make the styles learn different merges, so a wrong pre-tokenizer shows up.
    corpus = [
        " ".join(WORDS),
        "turn on the kitchen light at 7 please",
        "set the fan to 2024 or 123.",
    ]
    tok.train_from_iterator(corpus * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)


def make_bpe_base(
    folder: Path, arch: str = "llama", seed: int = 0, style: str = "gpt2", **overrides
) -> Path:
    """Save a tiny random causal LM like `make_base`, with a byte-level BPE tokenizer.

    The vocabulary needs room for the 256 byte symbols, so the model's `vocab_size`
    defaults to 320; the tokenizer may use fewer ids than the embedding has rows.
    """
    overrides.setdefault("vocab_size", 320)
    make_base(folder, arch, seed=seed, **overrides)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    save_bpe_tokenizer(folder, overrides["vocab_size"] - 8, style=style)
    return folder


def make_peft_adapter(
    folder: Path, base_dir: Path, seed: int = 0, scale: float = 0.2, **config_overrides
) -> Path:
    """Save a perturbed peft ShadowPEFT adapter (a mirror shadow unless overridden).

    Every parameter peft marks trainable gets noise, so the zero-initialized injection `up`
    weights, the update MLPs, the projection and any `modules_to_save` copy all act. Select a
    subset of decoder blocks with `target_modules`, for example `["model.layers.1",
    "model.layers.2"]`. `layers_to_transform` does not select whole blocks, because peft 0.21
    applies it only to module names that continue past the layer index.

    `scale` is the noise's standard deviation. Keep it small (0.02) on real models, because
    peft's update MLPs read the raw, unnormalized block output. At 0.2 on the 30-layer SmolLM2,
    float32 rounding grows into logit differences as large as the logits themselves, even
    between peft's own sdpa and eager attention.
    """
    from peft import ShadowConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    settings = dict(
        task_type="CAUSAL_LM",
        r=8,
        shadow_alpha=0.5,
        shadow_dropout=0.0,
        update_hidden_size=8,
    )
    settings.update(config_overrides)
    if settings.get("shadow_model", "mirror") == "mirror":
        # peft rejects these sizes for a separate shadow model, which brings its own.
        settings.setdefault("shadow_num_hidden_layers", 1)
        settings.setdefault("shadow_intermediate_size", 32)
    model = get_peft_model(base, ShadowConfig(**settings))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(folder)
    return folder


def make_projected_shadow(folder: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Save a projected shadow checkpoint as peft reads it.

    The folder contains `config.json` with model_type `causal_lm_with_hidden_projection` and the
    inner backbone's config under `shadow_model_config`, and `model.safetensors` with the
    backbone under `shadow_model.` and `shadow_hidden_projection.weight` mapping the shadow
    width to `base_hidden_size`.
    """
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.manual_seed(seed)
    settings = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        base_hidden_size=48,
    )
    settings.update(overrides)
    base_hidden = settings.pop("base_hidden_size")
    config = make_config(arch, **settings)
    backbone = AutoModel.from_config(config)
    weights = {f"shadow_model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    weights["shadow_hidden_projection.weight"] = torch.randn(base_hidden, config.hidden_size) * 0.1
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"))
    raw = {
        "model_type": "causal_lm_with_hidden_projection",
        "shadow_model_config": config.to_dict(),
    }
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    return folder
