"""The embeddable API: load a bundle once, then `generate` or `stream`.

    from shadow_edge.runtime import load

    model = load("bundle/", mode="combined")
    for step in model.stream("Turn on the kitchen light"):
        print(step.text, end="", flush=True)

Generation is layered: `_steps` yields (token, probability) and owns prefill and the
decode loop; `stream` adds text, stop strings and running stats; `generate` joins them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadow_edge import bundle
from shadow_edge.errors import BundleError, GenerationError
from shadow_edge.runtime.backends import GgufBackend, OnnxBackend, physical_cores
from shadow_edge.runtime.sampling import Sampler, SamplingParams
from shadow_edge.runtime.text import StreamDecoder, TextCodec, check_text

logger = logging.getLogger(__name__)

MODES = ("combined", "detached")
BACKENDS = ("onnx", "gguf")

Prompt = str | bytes | Sequence[dict[str, str]] | list[int]


@dataclass(frozen=True)
class GenerationStep:
    """One generated token with its text piece and the running statistics."""

    text: str
    token: int
    probability: float
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token: float  # seconds from the call to the first token
    prompt_tps: float  # prompt tokens per second of prefill
    generation_tps: float  # generated tokens per second after the first one
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length", or None


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: text, tokens, per-token probabilities and statistics."""

    text: str
    tokens: list[int]
    probabilities: list[float]
    prompt_tokens: int
    time_to_first_token: float
    prompt_tps: float
    generation_tps: float
    finish_reason: str

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)

    @property
    def confidence(self) -> float:
        """Geometric mean probability of the generated tokens (1.0 for no tokens)."""
        if not self.probabilities:
            return 1.0
        return float(np.exp(np.mean(np.log(np.maximum(self.probabilities, 1e-12)))))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ShadowEdgeModel:
    """A loaded bundle in one mode and backend, with its own KV caches.

    Successive calls reuse the cache for the prompt prefix they share with the previous
    call (a chat conversation re-sends its history), and `reset` starts afresh.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        mode: str = "combined",
        backend: str = "onnx",
        precision: str | None = None,
        threads: int | None = None,
        verify_files: bool = True,
    ) -> None:
        if mode not in MODES:
            raise BundleError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if backend not in BACKENDS:
            raise BundleError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if threads is not None and threads < 1:
            raise BundleError(f"threads must be >= 1, got {threads}")
        self.folder = Path(bundle_dir)
        started = time.perf_counter()
        self.manifest = bundle.read_manifest(self.folder, verify_files=verify_files)
        self.mode = mode
        self.backend_name = backend
        self.threads = threads or physical_cores()
        self.codec = TextCodec(
            self.folder, self.manifest.special_tokens, self.manifest.chat_template
        )
        self.eos_ids = set(self.manifest.special_tokens.get("eos_token_ids") or [])

        if backend == "gguf":
            if mode != "detached":
                raise BundleError(
                    "the gguf backend runs the detached shadow only, because llama.cpp cannot run "
                    "the backbone. Use detached mode (--detached), or the onnx backend for "
                    "combined mode."
                )
            if not self.manifest.gguf:
                raise BundleError(
                    f"{self.folder} has no {bundle.SHADOW_GGUF}; export it with --gguf"
                )
            self.precision = self.manifest.gguf["type"]
            path = self.folder / self.manifest.gguf["file"]
            self.backend = GgufBackend(path, self.manifest.context_length, self.threads)
        else:
            available = self.manifest.precisions
            self.precision = precision or available[0]
            if self.precision not in available:
                raise BundleError(
                    f"{self.folder}: precision {self.precision!r} not in this bundle "
                    f"(it has {', '.join(available)})"
                )
            self.backend = OnnxBackend(
                self.folder, self.manifest, self.precision, mode == "detached", self.threads
            )
        self.load_seconds = time.perf_counter() - started

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def reset(self) -> None:
        """Forget the cached conversation."""
        self.backend.reset()

    def encode(self, prompt: Prompt) -> list[int]:
        """Tokenize a plain prompt or render and tokenize chat messages.

        A list of ints is taken as token ids already.
        """
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            vocab = self.manifest.vocab_size
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise GenerationError(
                    f"token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})"
                )
            return list(prompt)
        if isinstance(prompt, (str, bytes)):
            text = check_text(prompt)
            if not text.strip():
                raise GenerationError("prompt is empty")
            add_bos = bool(self.manifest.special_tokens.get("add_bos_token"))
            return self.codec.encode(text, add_bos=add_bos)
        messages = [dict(m) for m in prompt]
        for i, message in enumerate(messages):
            if "content" in message:
                message["content"] = check_text(message["content"], f"chat message {i}")
        return self.codec.encode_chat(messages)

    def _fit_prompt(self, ids: list[int], truncate: bool) -> list[int]:
        limit = self.context_length - 1  # leave room for at least one new token
        if len(ids) <= limit:
            return ids
        if not truncate:
            raise GenerationError(
                f"prompt is {len(ids)} tokens but the context length is {self.context_length}; "
                "shorten it, or pass truncate=True (--truncate) to keep only its last tokens"
            )
        logger.warning("prompt truncated from %d to its last %d tokens", len(ids), limit)
        return ids[-limit:]

    def _prefill(self, ids: list[int]) -> np.ndarray:
        reuse = min(_common_prefix(self.backend.tokens, ids), len(ids) - 1)
        if reuse < len(self.backend.tokens):
            self.backend.trim(reuse)
        return self.backend.forward(ids[reuse:])[-1]

    def _steps(
        self, ids: list[int], sampler: Sampler, max_new_tokens: int
    ) -> Iterator[tuple[int, float, str | None]]:
        logits = self._prefill(ids)
        seen = np.asarray(ids, dtype=np.int64)
        for n in range(max_new_tokens):
            token, probability = sampler(logits, seen)
            if token in self.eos_ids:
                yield token, probability, "stop"
                return
            at_limit = (
                n + 1 == max_new_tokens or len(self.backend.tokens) + 1 >= self.context_length
            )
            if at_limit:
                yield token, probability, "length"
                return
            yield token, probability, None
            logits = self.backend.forward([token])[-1]
            seen = np.append(seen, token)

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        truncate: bool = False,
    ) -> Iterator[GenerationStep]:
        """Yield one `GenerationStep` per generated token (EOS included, with empty text)."""
        defaults = self.manifest.generation
        max_new_tokens = (
            defaults.get("max_new_tokens", 256) if max_new_tokens is None else max_new_tokens
        )
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}")
        params = SamplingParams(
            temperature=defaults.get("temperature", 0.0) if temperature is None else temperature,
            top_k=defaults.get("top_k", 0) if top_k is None else top_k,
            top_p=defaults.get("top_p", 1.0) if top_p is None else top_p,
            repetition_penalty=(
                defaults.get("repetition_penalty", 1.0)
                if repetition_penalty is None
                else repetition_penalty
            ),
            seed=seed,
        )
        stops = [check_text(s, "stop string") for s in stop]
        if any(not s for s in stops):
            raise GenerationError("stop strings must not be empty")
        ids = self._fit_prompt(self.encode(prompt), truncate)
        return self._stream(ids, Sampler(params), int(max_new_tokens), stops)

    def _stream(self, ids, sampler, max_new_tokens, stops) -> Iterator[GenerationStep]:
        started = time.perf_counter()
        decoder = StreamDecoder(self.codec)
        text = ""  # all text so far
        emitted = 0  # length of `text` already yielded
        first_token_at = None
        count = 0
        for token, probability, finish in self._steps(ids, sampler, max_new_tokens):
            now = time.perf_counter()
            if first_token_at is None:
                first_token_at = now
            count += 1
            if finish != "stop" or token not in self.eos_ids:
                text += decoder.push(token)
            hit = _find_stop(text, stops)
            if hit is not None:
                text, finish = text[:hit], "stop"
            # Hold back a tail that could still become a stop string.
            safe = len(text) if finish else len(text) - _stop_prefix_len(text, stops)
            piece = text[emitted:safe]
            emitted = max(emitted, safe)
            ttft = first_token_at - started
            decode_time = now - first_token_at
            yield GenerationStep(
                text=piece,
                token=token,
                probability=probability,
                prompt_tokens=len(ids),
                generated_tokens=count,
                time_to_first_token=ttft,
                prompt_tps=len(ids) / ttft if ttft > 0 else 0.0,
                generation_tps=(count - 1) / decode_time if decode_time > 0 else 0.0,
                finish_reason=finish,
            )
            if finish:
                return

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        """Generate to completion; takes the same keyword arguments as `stream`."""
        pieces, tokens, probabilities = [], [], []
        last = None
        for step in self.stream(prompt, **kwargs):
            pieces.append(step.text)
            tokens.append(step.token)
            probabilities.append(step.probability)
            last = step
        return GenerationResult(
            text="".join(pieces),
            tokens=tokens,
            probabilities=probabilities,
            prompt_tokens=last.prompt_tokens,
            time_to_first_token=last.time_to_first_token,
            prompt_tps=last.prompt_tps,
            generation_tps=last.generation_tps,
            finish_reason=last.finish_reason or "length",
        )

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Return logits (T, vocab) for every position of a sequence, from an empty cache."""
        if not token_ids:
            raise GenerationError("token_ids is empty")
        if len(token_ids) > self.context_length:
            raise GenerationError(
                f"{len(token_ids)} tokens do not fit the context of {self.context_length}"
            )
        self.backend.reset()
        return self.backend.forward(list(token_ids), all_logits=True)


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def load(bundle_dir: str | Path, **kwargs) -> ShadowEdgeModel:
    """Load a bundle; keyword arguments as for `ShadowEdgeModel`."""
    return ShadowEdgeModel(bundle_dir, **kwargs)
