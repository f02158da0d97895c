"""Demo-task accuracy with the reference libraries' own forward and greedy decoding."""

from __future__ import annotations

import logging
from collections.abc import Callable

from shadow_edge.models import intent_task

logger = logging.getLogger(__name__)


def _encode_batch(tokenizer, examples):
    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            intent_task.chat_messages(e.command), add_generation_prompt=True, tokenize=False
        )
        for e in examples
    ]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


def greedy_decode(model, input_ids, attention_mask, max_new_tokens: int, eos_id: int, cached: bool):
    """Greedy-decode a left-padded batch by calling `model`'s forward step by step.

    With `cached`, each step passes the new token and the `past_key_values` the previous
    call returned, which is how shadow-peft's forward keeps its paired base and shadow
    caches. transformers' `generate` cannot drive that path: it hands the cache over as
    `cache`, a name shadow-peft 0.1.1 does not read, and falls back to a full recompute.
    Without `cached`, every step reruns the whole sequence (shadow-peft's detached mode has
    no cache).
    """
    import torch

    B = input_ids.shape[0]
    sequence = input_ids
    mask = attention_mask
    past = None
    finished = torch.zeros(B, dtype=torch.bool)
    new_tokens = []
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if cached and past is not None:
            step_ids, step_positions = sequence[:, -1:], positions[:, -1:]
        else:
            step_ids, step_positions = sequence, positions
        with torch.no_grad():
            out = model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=past,
                use_cache=cached,
            )
        past = out.past_key_values if cached else None
        token = out.logits[:, -1].argmax(-1)
        token = torch.where(finished, torch.full_like(token, eos_id), token)
        new_tokens.append(token)
        finished |= token == eos_id
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
        if bool(finished.all()):
            break
    return torch.stack(new_tokens, dim=1)


def greedy_answers(
    model,
    tokenizer,
    examples: list[intent_task.Example],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    cached: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Answer each held-out command greedily with `model`'s own forward, in batches."""
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = _encode_batch(tokenizer, examples[start : start + batch_size])
        tokens = greedy_decode(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens,
            tokenizer.eos_token_id,
            cached,
        )
        answers += tokenizer.batch_decode(tokens, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(answers))
    return answers
