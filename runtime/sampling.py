"""Token samplers: plain callables from logits (and the tokens so far) to a token id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shadow_edge.errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; `temperature == 0` means greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise GenerationError(
                f"temperature must be a finite number >= 0, got {self.temperature}"
            )
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise GenerationError(
                f"top_k must be an integer >= 0 (0 disables it), got {self.top_k}"
            )
        if not (0 < self.top_p <= 1):
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise GenerationError(
                f"repetition_penalty must be a finite number > 0 (1 disables it), "
                f"got {self.repetition_penalty}"
            )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Penalize tokens already in the sequence as transformers does (divide or multiply)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    logits = logits.copy()
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def filter_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or k >= logits.size:
        return logits
    threshold = np.partition(logits, -k)[-k]
    return np.where(logits < threshold, -np.inf, logits)


def filter_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of tokens whose probability mass reaches `p`."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = softmax(logits[order])
    cumulative = np.cumsum(probs)
    # A token stays when the mass before it is still below p, so the top token always stays.
    keep = (cumulative - probs) < p
    filtered = np.full_like(logits, -np.inf)
    filtered[order[keep]] = logits[order[keep]]
    return filtered


class Sampler:
    """Pick the next token; returns (token id, probability of that token).

    The probability is taken from the distribution the token was drawn from (after
    penalties, temperature and filtering); for greedy decoding it is the plain softmax.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, seen: np.ndarray) -> tuple[int, float]:
        p = self.params
        logits = apply_repetition_penalty(logits.astype(np.float32), seen, p.repetition_penalty)
        if p.temperature == 0:
            token = int(np.argmax(logits))
            return token, float(softmax(logits)[token])
        logits = logits / p.temperature
        logits = filter_top_k(logits, p.top_k)
        logits = filter_top_p(logits, p.top_p)
        probs = softmax(logits)
        token = int(self.rng.choice(probs.size, p=probs))
        return token, float(probs[token])
