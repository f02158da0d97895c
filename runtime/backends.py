"""Forward-pass backends: the ONNX graphs (combined or detached) and llama.cpp (detached).

A backend keeps the key/value cache of the tokens it has seen and exposes one call,
`forward(new_tokens) -> logits of the last position`. `tokens` lists what the cache holds,
so the session can reuse a shared prompt prefix and `trim` the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from shadow_edge import bundle
from shadow_edge.bundle import CacheSpec, GraphSpec, Manifest
from shadow_edge.errors import BundleError

logger = logging.getLogger(__name__)

EMPTY_INDICES = np.zeros((0,), dtype=np.int64)


def physical_cores() -> int:
    """Count physical CPU cores (Linux /proc/cpuinfo), falling back to logical ones."""
    try:
        pairs = set()
        physical = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    pairs.add((physical, core))
                    physical = core = None
        if core is not None:
            pairs.add((physical, core))
        if pairs:
            return len(pairs)
    except OSError:
        logger.debug("no /proc/cpuinfo; using the logical CPU count")
    return os.cpu_count() or 1


class KVCache:
    """Key/value tensors of one graph for batch 1, kept as onnxruntime values.

    Graph outputs are fed back as the next inputs without a copy into numpy.
    """

    def __init__(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.past_names = spec.past_names()
        self.present_names = spec.present_names()
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.spec.num_kv_heads, 0, self.spec.head_dim), dtype=np.float32)
        self.values = [ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.past_names]
        self.length = 0

    def update(self, presents: list[ort.OrtValue], length: int) -> None:
        self.values = presents
        self.length = length

    def trim(self, length: int) -> None:
        """Keep the first `length` positions (a copy; used only when a prompt diverges)."""
        if length >= self.length:
            return
        if length == 0:
            self.reset()
            return
        self.values = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :length]))
            for v in self.values
        ]
        self.length = length

    @property
    def nbytes(self) -> int:
        per_position = 2 * self.spec.num_layers * self.spec.num_kv_heads * self.spec.head_dim * 4
        return per_position * self.length


class OnnxGraph:
    """One ONNX graph of a bundle, run through IO binding on the CPU."""

    def __init__(self, path: Path, spec: GraphSpec, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load the graph ({exc})") from exc
        self.spec = spec
        missing = set(spec.inputs) - {i.name for i in self.session.get_inputs()}
        if missing:
            raise BundleError(f"{path}: graph lacks inputs {sorted(missing)} named in the manifest")

    def run(self, feeds: dict, outputs: list[str]) -> list[ort.OrtValue]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()


class OnnxBackend:
    """Combined mode (shadow graph feeds s0 to the backbone) or detached mode (shadow only)."""

    def __init__(
        self, folder: Path, manifest: Manifest, precision: str, detached: bool, threads: int
    ) -> None:
        self.detached = detached
        self.context_length = manifest.context_length
        self.shadow = OnnxGraph(folder / manifest.shadow.files[precision], manifest.shadow, threads)
        self.shadow_cache = KVCache(manifest.shadow.cache)
        self.backbone = None
        self.backbone_cache = None
        if not detached:
            path = folder / manifest.backbone.files[precision]
            self.backbone = OnnxGraph(path, manifest.backbone, threads)
            self.backbone_cache = KVCache(manifest.backbone.cache)
        # One row of ones, sliced per step, so no mask is allocated per token.
        self._ones = np.ones((1, self.context_length), dtype=np.int64)
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.shadow_cache.reset()
        if self.backbone_cache is not None:
            self.backbone_cache.reset()
        self.tokens = []

    def trim(self, length: int) -> None:
        self.shadow_cache.trim(length)
        if self.backbone_cache is not None:
            self.backbone_cache.trim(length)
        self.tokens = self.tokens[:length]

    def _inputs(self, new_tokens: list[int], all_logits: bool) -> dict:
        past = len(self.tokens)
        T = len(new_tokens)
        return {
            bundle.INPUT_IDS: np.asarray([new_tokens], dtype=np.int64),
            bundle.ATTENTION_MASK: self._ones[:, : past + T],
            bundle.POSITION_IDS: np.arange(past, past + T, dtype=np.int64)[None, :],
            bundle.LOGITS_INDICES: (
                np.arange(T, dtype=np.int64) if all_logits else np.asarray([T - 1], np.int64)
            ),
        }

    def forward(self, new_tokens: list[int], all_logits: bool = False) -> np.ndarray:
        """Run the new tokens through the cache; return logits (K, vocab)."""
        feeds = self._inputs(new_tokens, all_logits)
        total = len(self.tokens) + len(new_tokens)
        shadow_feeds = dict(feeds)
        if not self.detached:
            shadow_feeds[bundle.LOGITS_INDICES] = EMPTY_INDICES
        shadow_feeds.update(zip(self.shadow_cache.past_names, self.shadow_cache.values))
        shadow_out = self.shadow.run(
            shadow_feeds, [bundle.SHADOW_HIDDEN, bundle.LOGITS, *self.shadow_cache.present_names]
        )
        if self.detached:
            logits = shadow_out[1].numpy()[0]
        else:
            backbone_feeds = dict(feeds)
            backbone_feeds[bundle.SHADOW_HIDDEN] = shadow_out[0]
            backbone_feeds.update(zip(self.backbone_cache.past_names, self.backbone_cache.values))
            backbone_out = self.backbone.run(
                backbone_feeds, [bundle.LOGITS, *self.backbone_cache.present_names]
            )
            logits = backbone_out[0].numpy()[0]
            self.backbone_cache.update(backbone_out[1:], total)
        # State changes only after every graph ran, so an interrupt leaves it consistent.
        self.shadow_cache.update(shadow_out[2:], total)
        self.tokens = self.tokens + list(new_tokens)
        return logits

    @property
    def cache_nbytes(self) -> int:
        extra = self.backbone_cache.nbytes if self.backbone_cache is not None else 0
        return self.shadow_cache.nbytes + extra


class GgufBackend:
    """The detached shadow's GGUF file run by llama.cpp (llama-cpp-python)."""

    def __init__(self, path: Path, context_length: int, threads: int) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BundleError(
                "the gguf backend needs llama-cpp-python; install shadow-edge[gguf]"
            ) from exc
        self.context_length = context_length
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context_length,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self.tokens: list[int] = []

    def reset(self) -> None:
        self.llm.reset()
        self.tokens = []

    def trim(self, length: int) -> None:
        self.llm.n_tokens = min(self.llm.n_tokens, length)
        self.tokens = self.tokens[:length]

    def forward(self, new_tokens: list[int], all_logits: bool = False) -> np.ndarray:
        if all_logits:
            raise NotImplementedError("the gguf backend returns last-position logits only")
        # Llama.eval drops cached positions past n_tokens before it runs the new tokens.
        self.llm.n_tokens = len(self.tokens)
        self.llm.eval(new_tokens)
        self.tokens = self.tokens + list(new_tokens)
        # With logits_all=False, llama-cpp-python 0.3.36 no longer copies logits into
        # `scores`, so the last position's row is read from the context directly.
        vocab = self.llm.n_vocab()
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(vocab,))
        return np.array(logits, dtype=np.float32)[None, :]

    @property
    def cache_nbytes(self) -> int:
        return 0
