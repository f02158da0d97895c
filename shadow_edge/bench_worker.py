"""Measure one benchmark configuration in this process and print the result as JSON.

`shadow-edge bench` starts one worker per configuration, so each peak-memory figure covers
one configuration alone:

    python -m shadow_edge.bench_worker SPEC.json

SPEC.json is written by `shadow_edge.bench`: the configuration, the settings and the
prompt token ids. The worker prints one JSON object on stdout (`{"error": ...}` for a
problem the user can fix) and sends everything libraries print to stderr. Only the
reference runners import torch, and only when they run.
"""

from __future__ import annotations

import gc
import json
import logging
import os

# NOTE: `resource` exists on Linux and macOS only, so the benchmark does not run on Windows.
import resource
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from shadow_edge.errors import ShadowEdgeError

logger = logging.getLogger(__name__)

# Passes over every prompt that run before the timed ones, so one-time costs (memory arena
# growth, lazy kernel selection) stay out of the figures.
WARMUP_PASSES = 1


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def peak_rss_bytes() -> int:
    """Return the peak resident set size of this process so far.

    Linux keeps `ru_maxrss` across fork and exec, so a worker would report its parent's
    peak when that is higher. VmHWM in /proc/self/status belongs to this process's own
    address space, which exec creates afresh.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB
    except OSError:
        logger.debug("no /proc/self/status; using ru_maxrss")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux kilobytes.
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def summarize(values: list[float]) -> dict[str, Any]:
    """Return the median, min and max of the timed repetitions, and the values themselves."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


# --- runners: load a model, then generate exactly N tokens and time each one ---------------


class ShadowEdgeRunner:
    """A bundle through the shadow-edge runtime, in one mode, backend and precision."""

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        self.config = config
        self.threads = threads
        self.model = None
        gguf = config["backend"] == "gguf"
        self.packages = ("llama-cpp-python",) if gguf else ("onnxruntime",)

    def prepare(self) -> None:
        import shadow_edge.runtime  # noqa: F401

        if self.config["backend"] == "gguf":
            import llama_cpp  # noqa: F401

    def load(self) -> None:
        from shadow_edge.runtime import load

        self.model = load(
            self.config["bundle"],
            mode=self.config["mode"],
            backend=self.config["backend"],
            precision=self.config["precision"] if self.config["backend"] == "onnx" else None,
            threads=self.threads,
            verify_files=self.config["verify_files"],
        )
        # The runtime stops at the ids in `eos_ids`. With the set empty, every run
        # produces exactly the requested number of tokens, like min_new_tokens in transformers.
        self.model.eos_ids = set()

    def unload(self) -> None:
        self.model = None

    def generate(self, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
        self.model.reset()  # no reuse of the previous run's prompt cache
        times = []
        started = time.perf_counter()
        steps = self.model.stream(
            ids,
            max_new_tokens=new_tokens,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            repetition_penalty=1.0,
        )
        for _step in steps:
            times.append(time.perf_counter())
        return started, times


def _token_clock_class():
    """Build a transformers streamer that records when each generated token arrives."""
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.saw_prompt = False

        def put(self, value) -> None:
            now = time.perf_counter()
            # generate() sends the prompt first, then one tensor per new token.
            if not self.saw_prompt:
                self.saw_prompt = True
                return
            self.times.extend([now] * int(value.numel()))

        def end(self) -> None:
            pass

    return TokenClock


class HfRunner:
    """`generate()` of shadow-peft, peft or plain transformers, as their users call it."""

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.config = config
        self.model = None
        self.clock_class = _token_clock_class()
        library = config["engine"]
        self.packages = {
            "shadow-peft": ("torch", "transformers", "shadow-peft"),
            "peft": ("torch", "transformers", "peft"),
            "transformers": ("torch", "transformers"),
        }[library]

    def prepare(self) -> None:
        import transformers  # noqa: F401

        if self.config["engine"] == "shadow-peft":
            import shadow_peft  # noqa: F401
        elif self.config["engine"] == "peft":
            import peft  # noqa: F401

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        config = self.config
        base = AutoModelForCausalLM.from_pretrained(config["base"], dtype=torch.float32)
        if config["engine"] == "shadow-peft":
            from shadow_peft import ShadowForCausalLM

            shadow_model = None
            if config.get("shadow_model"):
                shadow_model = AutoModelForCausalLM.from_pretrained(config["shadow_model"])
            model = ShadowForCausalLM.from_pretrained(
                base,
                config["adapter"],
                shadow_model=shadow_model,
                inference_mode=config["inference_mode"],
            )
        elif config["engine"] == "peft":
            from peft import PeftConfig, PeftModel

            adapter_config = PeftConfig.from_pretrained(config["adapter"])
            if config.get("shadow_model"):
                adapter_config.shadow_model = config["shadow_model"]
            model = PeftModel.from_pretrained(base, config["adapter"], config=adapter_config)
            if config["mode"] == "detached":
                model = model.unload_shadow()
        else:
            model = base
        model.eval()
        self.model = model

    def unload(self) -> None:
        self.model = None

    def generate(self, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long)
        clock = self.clock_class()
        started = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        return started, clock.times


class LlamaCppRunner:
    """llama-cpp-python's token generator on one GGUF file, greedy."""

    packages = ("llama-cpp-python",)

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        self.config = config
        self.threads = threads
        self.llm = None

    def prepare(self) -> None:
        import llama_cpp  # noqa: F401

    def load(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=self.config["gguf"],
            n_ctx=self.config["n_ctx"],
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )

    def unload(self) -> None:
        if self.llm is not None:
            self.llm.close()
        self.llm = None

    def generate(self, ids: list[int], new_tokens: int) -> tuple[float, list[float]]:
        vocab_size = self.llm.n_vocab()
        outside = [token for token in ids if token >= vocab_size]
        if outside:
            raise ShadowEdgeError(
                f"{self.config['gguf']}: prompt token id {outside[0]} is outside the file's "
                f"vocabulary of {vocab_size}; use a GGUF with the bundle's tokenizer"
            )
        # reset() empties the token history, so generate() cannot reuse a cached prefix.
        self.llm.reset()
        times = []
        started = time.perf_counter()
        tokens = self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        # llama.cpp's generator never stops at EOS by itself; the caller decides when to end.
        for _token in tokens:
            times.append(time.perf_counter())
            if len(times) == new_tokens:
                break
        tokens.close()
        return started, times


def make_runner(config: dict[str, Any], threads: int):
    engine = config["engine"]
    if engine == "shadow-edge":
        return ShadowEdgeRunner(config, threads)
    if engine in ("shadow-peft", "peft", "transformers"):
        return HfRunner(config, threads)
    if engine == "llama.cpp":
        return LlamaCppRunner(config, threads)
    raise ValueError(f"unknown benchmark engine {engine!r}")


# --- the measurement ------------------------------------------------------------------------


def measure(runner, settings: dict[str, Any], prompts: dict[int, list[int]]) -> dict[str, Any]:
    """Load once, run warm-up and timed passes, then time `repeats` more loads.

    `rss_before_load_bytes` is read after the engine's libraries are imported, so the
    difference to the peak is what loading and running the model added. The peak is read
    before the extra loads, so it covers one loaded model and its generation runs.
    """
    lengths = settings["prompt_lengths"]
    decode_length = settings["decode_prompt_length"]
    new_tokens = settings["new_tokens"]
    repeats = settings["repeats"]

    runner.prepare()
    rss_before_load = current_rss_bytes()
    started = time.perf_counter()
    runner.load()
    first_load = time.perf_counter() - started
    rss_after_load = current_rss_bytes()

    ttft: dict[int, list[float]] = {length: [] for length in lengths}
    decode_tps: list[float] = []
    decode_counts: list[int] = []
    for index in range(WARMUP_PASSES + repeats):
        timed = index >= WARMUP_PASSES
        for length in lengths:
            begin, times = runner.generate(prompts[length], 1)
            if not times:
                raise ShadowEdgeError(f"generate returned no token for the {length}-token prompt")
            if timed:
                ttft[length].append(times[0] - begin)
        begin, times = runner.generate(prompts[decode_length], new_tokens)
        if len(times) < 2:
            raise ShadowEdgeError(
                f"decode run returned {len(times)} tokens; at least 2 are needed to time it"
            )
        elapsed = times[-1] - times[0]
        if elapsed <= 0:
            raise ShadowEdgeError(f"decode run of {len(times)} tokens took no measurable time")
        if timed:
            decode_tps.append((len(times) - 1) / elapsed)
            decode_counts.append(len(times))
    peak = peak_rss_bytes()

    loads = []
    for _ in range(repeats):
        runner.unload()
        gc.collect()
        started = time.perf_counter()
        runner.load()
        loads.append(time.perf_counter() - started)
    runner.unload()

    return {
        "first_load_s": first_load,
        "load_s": summarize(loads),
        "ttft_s": {str(length): summarize(values) for length, values in ttft.items()},
        "decode_tps": summarize(decode_tps),
        "decode_tokens": min(decode_counts),
        "peak_rss_bytes": peak,
        "rss_before_load_bytes": rss_before_load,
        "rss_after_load_bytes": rss_after_load,
    }


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    config = spec["config"]
    settings = spec["settings"]
    prompts = {int(length): ids for length, ids in spec["prompts"].items()}
    runner = make_runner(config, settings["threads"])
    result = measure(runner, settings, prompts)
    packages = ("shadow-edge", *runner.packages)
    result["pid"] = os.getpid()
    result["threads"] = settings["threads"]
    result["versions"] = {name: _package_version(name) for name in packages}
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m shadow_edge.bench_worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=spec.get("log_level", logging.WARNING), stream=sys.stderr)

    # Keep stdout for the result alone: C libraries (llama.cpp) write to file descriptor 1.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    code = 0
    try:
        result = run_spec(spec)
    except ShadowEdgeError as exc:
        result = {"error": str(exc)}
        code = 1
    sys.stdout.flush()
    os.write(result_fd, (json.dumps(result) + "\n").encode("utf-8"))
    os.close(result_fd)
    return code


if __name__ == "__main__":
    sys.exit(main())
