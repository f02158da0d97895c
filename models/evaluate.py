"""Demo-task accuracy with the reference libraries' own forward and greedy decoding."""

from __future__ import annotations

import logging
from collections.abc import Callable

from shadow_edge.models import intent_task

logger = logging.getLogger(__name__)


def greedy_answers(
    model,
    tokenizer,
    examples: list[intent_task.Example],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Answer each held-out command with `model.generate` (greedy), batched and left-padded."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            intent_task.chat_messages(e.command), add_generation_prompt=True, tokenize=False
        )
        for e in examples
    ]
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.no_grad():
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(answers))
    return answers
