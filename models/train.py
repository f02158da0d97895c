"""Fine-tune a ShadowPEFT adapter on the demo intent task with the `shadow-peft` library.

The recipe trains an implicit one-layer shadow with a reduced MLP on CPU, with the loss on
the answer tokens only, and saves the adapter with shadow-peft's own `save_pretrained`.
The result is cached under `~/.cache/shadow-edge/adapters/`, keyed by every input that
changes it (settings, base weights, task generator), so a second run reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shadow_edge.models import intent_task
from shadow_edge.paths import cache_dir, sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the demo adapter; every field is part of the cache key."""

    seed: int = 0
    n_train: int = 2000
    steps: int = 180
    batch_size: int = 8
    learning_rate: float = 3e-3
    warmup_steps: int = 15
    num_shadow_layers: int = 1
    # A quarter of SmolLM2's 1536: the shadow's MLP dominates its size.
    shadow_intermediate_size: int = 384
    injection_hidden_size: int = 16
    gate_hidden_size: int = 16
    alpha: float = 0.1
    # The detached shadow is a product mode here, so its loss weighs more than
    # shadow-peft's default of 0.05.
    shadow_loss_weight: float = 0.5
    # Start the shadow layer from the base's first layer (attention, norms, a slice of the
    # MLP) instead of random weights: a random layer cannot learn language in a CPU budget.
    init_from_base: bool = True
    # Stop early when training runs past this budget (0 disables it). Off by default,
    # because a stop that depends on machine speed would make the adapter irreproducible.
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_train", "steps", "batch_size", "num_shadow_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")


def adapter_cache_key(base_dir: Path, settings: TrainSettings) -> str:
    weights = sorted(base_dir.glob("*.safetensors"))
    train, _ = intent_task.make_splits(seed=settings.seed, n_train=settings.n_train)
    task_text = "\n".join(f"{e.command}\t{e.answer}" for e in train)
    payload = {
        "settings": dataclasses.asdict(settings),
        "base_config": json.loads((base_dir / "config.json").read_text()),
        "base_weights": [sha256_file(w) for w in weights],
        "system_prompt": intent_task.SYSTEM_PROMPT,
        "train_data": hashlib.sha256(task_text.encode()).hexdigest(),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _warm_start_shadow(peft_model, base_model) -> None:
    """Copy the base's first decoder layer and final norm into the implicit shadow."""
    import torch

    shadow = peft_model.shadow_model
    # shadow-peft wraps the base layers in place; the weights sit under `.layer`.
    source = base_model.model.layers[0]
    source = getattr(source, "layer", source)
    source_params = dict(source.named_parameters())
    target = shadow.layers[0]
    with torch.no_grad():
        for name, param in target.named_parameters():
            src = source_params[name]
            if src.shape == param.shape:
                param.copy_(src)
            elif name.endswith(("gate_proj.weight", "up_proj.weight")):
                param.copy_(src[: param.shape[0]])
            elif name.endswith("down_proj.weight"):
                param.copy_(src[:, : param.shape[1]])
            else:
                raise ValueError(
                    f"cannot warm-start {name}: {tuple(src.shape)} vs {tuple(param.shape)}"
                )
        shadow.norm.weight.copy_(base_model.model.norm.weight)


def encode_examples(tokenizer, examples) -> list[tuple[list[int], list[int]]]:
    """Tokenize chat prompts plus answers; labels mask everything but the answer."""
    end = tokenizer.eos_token or ""
    encoded = []
    for example in examples:
        prompt = tokenizer.apply_chat_template(
            intent_task.chat_messages(example.command), add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(example.answer + end, add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return encoded


def _collate(batch, pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return input_ids, mask, labels


def train_adapter(
    base_dir: Path,
    out_dir: Path,
    settings: TrainSettings,
    on_step: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Train the demo adapter and save it to `out_dir`; return training statistics."""
    import torch
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    random.seed(settings.seed)
    torch.manual_seed(settings.seed)

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = ShadowConfig(
        num_shadow_layers=settings.num_shadow_layers,
        injection_hidden_size=settings.injection_hidden_size,
        gate_hidden_size=settings.gate_hidden_size,
        alpha=settings.alpha,
        dropout=0.0,
        shadow_intermediate_size=settings.shadow_intermediate_size,
    )
    peft_model = get_shadow_model(base, config)
    if settings.init_from_base:
        _warm_start_shadow(peft_model, base)
    model = ShadowForCausalLM(peft_model, shadow_loss_weight=settings.shadow_loss_weight)
    model.train()

    train, _ = intent_task.make_splits(seed=settings.seed, n_train=settings.n_train)
    encoded = encode_examples(tokenizer, train)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    order = list(range(len(encoded)))
    rng = random.Random(settings.seed)
    rng.shuffle(order)

    start = time.perf_counter()
    losses: list[float] = []
    steps_done = 0
    for step in range(settings.steps):
        first = (step * settings.batch_size) % len(order)
        batch = [encoded[order[(first + i) % len(order)]] for i in range(settings.batch_size)]
        input_ids, mask, labels = _collate(batch, pad_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        steps_done = step + 1
        if on_step is not None:
            on_step(steps_done, settings.steps, losses[-1])
        elapsed_min = (time.perf_counter() - start) / 60
        if settings.max_minutes and elapsed_min > settings.max_minutes:
            logger.warning(
                "training stopped at step %d of %d: past the %.0f-minute budget",
                steps_done,
                settings.steps,
                settings.max_minutes,
            )
            break

    model.eval()
    model.save_pretrained(out_dir)
    stats = {
        "steps": steps_done,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "settings": dataclasses.asdict(settings),
    }
    (out_dir / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def demo_adapter_dir(base_dir: Path, settings: TrainSettings) -> Path:
    """Return where the demo adapter for this base and these settings is cached."""
    return cache_dir() / "adapters" / f"demo-{adapter_cache_key(base_dir, settings)}"


def demo_bundle_dir(adapter_dir: Path) -> Path:
    """Return where the demo caches the bundle it exports from `adapter_dir`."""
    return cache_dir() / "bundles" / adapter_dir.name


def obtain_demo_adapter(
    base_dir: Path,
    settings: TrainSettings | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Return the cached demo adapter for this base and settings, training it if needed."""
    settings = settings or TrainSettings()
    adapter_dir = demo_adapter_dir(base_dir, settings)
    if (adapter_dir / "shadow_adapter.safetensors").is_file():
        return adapter_dir
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=adapter_dir.parent))
    try:
        train_adapter(base_dir, tmp, settings, on_step=on_step)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        tmp.replace(adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return adapter_dir
