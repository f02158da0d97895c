"""Parity checks shared by the tiny-model and real-model tests."""

from __future__ import annotations

import numpy as np
import torch

from shadow_edge.runtime import load


def reference_greedy(spec, prompt_ids: list[int], detached: bool, n: int, eos: set[int]):
    """Greedy tokens from the reference library's full forward (no cache)."""
    sequence = list(prompt_ids)
    tokens = []
    with torch.no_grad():
        for _ in range(n):
            logits = spec.reference_logits(torch.tensor([sequence]), detached)
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            sequence.append(token)
            if token in eos:
                break
    return tokens


def check_bundle_parity(bundle_dir, spec, prompts, new_tokens=8, rel_tol=1e-4, precision="fp32"):
    """Assert logits, greedy outputs and cached decode of both modes match the reference."""
    for mode in ("combined", "detached"):
        detached = mode == "detached"
        model = load(bundle_dir, mode=mode, precision=precision)
        for prompt in prompts:
            ids = model.encode(prompt)
            result = model.generate(ids, max_new_tokens=new_tokens, temperature=0.0)
            expected = reference_greedy(spec, ids, detached, new_tokens, model.eos_ids)
            assert result.tokens == expected, f"{mode}: greedy tokens differ for {prompt!r}"

            sequence = ids + result.tokens
            full = model.logits(sequence)
            with torch.no_grad():
                ref = spec.reference_logits(torch.tensor([sequence]), detached)[0].numpy()
            scale = np.abs(ref).max()
            rel = np.abs(full - ref).max() / scale
            assert rel < rel_tol, f"{mode}: relative logit error {rel:.2e} for {prompt!r}"

            # Cached decode equals a full recompute: each cached step's argmax is the
            # full-sequence argmax at that position.
            steps = full[len(ids) - 1 : len(sequence) - 1].argmax(axis=-1)
            assert steps.tolist() == result.tokens, f"{mode}: cached decode != full recompute"
