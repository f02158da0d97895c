"""`shadow-edge bench`: load time, latency, decode speed, memory and size of a bundle.

Every configuration of the bundle (mode x precision x backend) runs in its own worker
process (`shadow_edge.bench_worker`), so each peak-memory figure belongs to one
configuration. With a comparison (`CompareSpec`), reference rows measure the libraries
people use today on the same prompt token ids: shadow-peft's and peft's `generate()`,
transformers' `generate()` of the plain base model, and llama.cpp on GGUF files.

Per configuration a worker measures:

- load time: `repeats` loads after the first one (the first warms the file cache);
- time to first token for each prompt length: prefill plus one sampled token;
- decode speed: (N - 1) / (time of token N - time of token 1) for exactly N new tokens,
  greedy, with EOS ignored, after a prompt of the shortest length;
- peak resident memory of the worker process (VmHWM on Linux), which includes the
  interpreter and every imported library;
- the size of the files that configuration loads.

One warm-up pass runs before the timed ones. Figures are the median with min and max
over the repetitions. Importing this module does not import torch.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shadow_edge
from shadow_edge import bundle
from shadow_edge.errors import ShadowEdgeError

logger = logging.getLogger(__name__)

SCHEMA = "shadow-edge-bench/1"
DEFAULT_PROMPT_LENGTHS = (32, 128, 512)
DECODE_PROMPT_LENGTH = 128
DEFAULT_NEW_TOKENS = 128
DEFAULT_REPEATS = 3
DEFAULT_THREADS = 2
MODES = ("combined", "detached")
BACKENDS = ("onnx", "gguf")
REFERENCES = ("shadow-peft", "peft", "transformers", "llama.cpp")
TOKENIZER_FILE = "tokenizer.json"

# Synthetic prompts are cut from this text, repeated as needed. Plain words give real
# vocabulary tokens with every tokenizer, so no prompt is made of unknown or special ids.
PROMPT_TEXT = (
    "please turn on the light in the kitchen and set the fan in the bedroom to low. "
    "what time is it in the room? the heater is off and the lights are on. "
    "you are a system that can help the user turn a light or a fan on and off, "
    "set a heater, and answer in json with the intent, the device and the room. "
)

SHADOW_PEFT_NOTE = (
    "shadow-peft 0.1.1's forward never reads the cache that transformers 5.x's generate() "
    "passes (it arrives as `cache=`), so every new token recomputes the whole sequence"
)
PEFT_NOTE = (
    "timing only: peft's generate() returns wrong tokens under transformers 5.x (seen with "
    "peft 0.21.2 and transformers 5.25), because its shadow decodes each new token without "
    "the shadow's past"
)
PEFT_DETACHED_NOTE = "peft's unload_shadow(): the shadow network alone, as a causal LM"


class BenchError(ShadowEdgeError):
    """Invalid benchmark settings, or a bundle configuration that failed to run."""


# --- settings ------------------------------------------------------------------------------


def parse_count(option: str, text: str, minimum: int = 1) -> int:
    """Parse a command-line integer, rejecting values below `minimum`."""
    try:
        value = int(text.strip())
    except ValueError:
        raise BenchError(f"{option} must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise BenchError(f"{option} must be an integer >= {minimum}, got {value}")
    return value


def parse_counts(option: str, text: str, minimum: int = 1) -> tuple[int, ...]:
    """Parse a comma-separated list of integers such as `32,128,512`."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise BenchError(f"{option} needs at least one integer, got {text!r}")
    return tuple(parse_count(option, part, minimum) for part in parts)


def parse_choices(option: str, text: str, choices: Sequence[str]) -> tuple[str, ...]:
    """Parse a comma-separated list of names, each one of `choices`."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise BenchError(f"{option} needs at least one of {', '.join(choices)}, got {text!r}")
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise BenchError(
            f"{option}: unknown value {unknown[0]!r}; choose from {', '.join(choices)}"
        )
    return names


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BenchError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class BenchSettings:
    """Settings shared by every configuration: prompt lengths, new tokens, repeats, threads."""

    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    new_tokens: int = DEFAULT_NEW_TOKENS  # decode needs two tokens to time the gap
    repeats: int = DEFAULT_REPEATS
    threads: int = DEFAULT_THREADS
    verify_files: bool = True  # the runtime's sha256 check on load, as in `run`

    def __post_init__(self) -> None:
        if not self.prompt_lengths:
            raise BenchError("prompt lengths must list at least one length")
        for length in self.prompt_lengths:
            _check_int("each prompt length", length, 1)
        object.__setattr__(self, "prompt_lengths", tuple(sorted(set(self.prompt_lengths))))
        _check_int("new tokens", self.new_tokens, 2)
        _check_int("repeats", self.repeats, 1)
        _check_int("threads", self.threads, 1)

    @property
    def decode_prompt_length(self) -> int:
        """Prompt length before the decode run: 128 tokens when listed, else the shortest.

        The project's decode targets are stated for a 128-token prompt.
        """
        return (
            DECODE_PROMPT_LENGTH
            if DECODE_PROMPT_LENGTH in self.prompt_lengths
            else self.prompt_lengths[0]
        )

    def to_dict(self) -> dict[str, Any]:
        from shadow_edge.bench_worker import WARMUP_PASSES

        return {
            "prompt_lengths": list(self.prompt_lengths),
            "decode_prompt_length": self.decode_prompt_length,
            "new_tokens": self.new_tokens,
            "repeats": self.repeats,
            "warmup_passes": WARMUP_PASSES,
            "threads": self.threads,
            "verify_files": self.verify_files,
        }


# Hub ids look like `owner/name`; anything else that does not exist is a missing folder.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _check_model_folder(option: str, value: str, hub_allowed: bool) -> None:
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BenchError(f"{option} {value}: folder has no config.json; pass a model folder")
        return
    if path.exists():
        raise BenchError(f"{option} {value} is a file; pass the model folder")
    if not (hub_allowed and HUB_ID.fullmatch(value)):
        raise BenchError(f"{option} {value}: folder not found")


@dataclass(frozen=True)
class CompareSpec:
    """Models and files for the reference rows: base model, adapter, optional GGUF file."""

    base: str
    adapter: str
    shadow_model: str | None = None
    base_gguf: str | None = None
    references: tuple[str, ...] = REFERENCES
    # A peft-format adapter for the peft rows when `adapter` is in shadow-peft's format.
    peft_adapter: str | None = None

    def __post_init__(self) -> None:
        if not self.base or not self.adapter:
            raise BenchError(
                "a comparison needs the base model and the adapter the bundle was exported "
                "from; pass --base and --adapter with --compare"
            )
        unknown = [r for r in self.references if r not in REFERENCES]
        if unknown or not self.references:
            raise BenchError(
                f"unknown reference {unknown or list(self.references)}; "
                f"choose from {', '.join(REFERENCES)}"
            )
        _check_model_folder("--base", self.base, hub_allowed=True)
        if self.peft_adapter and not Path(self.peft_adapter).expanduser().is_dir():
            raise BenchError(f"--peft-adapter {self.peft_adapter}: folder not found")
        if self.shadow_model:
            _check_model_folder("--shadow-model", self.shadow_model, hub_allowed=True)
        if self.base_gguf:
            path = Path(self.base_gguf).expanduser()
            if not path.is_file():
                raise BenchError(f"--base-gguf {self.base_gguf}: file not found")
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise BenchError(
                    f"--base-gguf {self.base_gguf}: not a GGUF file (starts with {magic!r})"
                )


# --- configurations ------------------------------------------------------------------------


@dataclass
class Configuration:
    """One row of the benchmark: what a worker loads, and the files it reads."""

    id: str
    label: str
    engine: str  # shadow-edge, shadow-peft, peft, transformers, llama.cpp
    mode: str  # combined, detached, base
    precision: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # absolute path -> size in bytes
    note: str | None = None

    @property
    def disk_bytes(self) -> int | None:
        return sum(self.files.values()) if self.files else None

    def worker_config(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "mode": self.mode,
            "precision": self.precision,
            "backend": self.backend,
            **self.options,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "engine": self.engine,
            "mode": self.mode,
            "precision": self.precision,
            "backend": self.backend,
            "note": self.note,
            "files": dict(self.files),
            "disk_bytes": self.disk_bytes,
        }


def _file_sizes(paths: Sequence[Path]) -> dict[str, int]:
    return {str(path.resolve()): path.stat().st_size for path in paths}


def _folder_files(folder: str | None) -> dict[str, int]:
    """Sizes of the regular files directly in a local folder; none for a hub id."""
    if not folder:
        return {}
    path = Path(folder).expanduser()
    if not path.is_dir():
        return {}
    return _file_sizes(sorted(p for p in path.iterdir() if p.is_file()))


def _bundle_files(folder: Path, model_files: list[str]) -> dict[str, int]:
    """Return the sizes of the manifest, the tokenizer and the model files a row loads."""
    names = [bundle.MANIFEST, TOKENIZER_FILE, *model_files]
    return _file_sizes([folder / name for name in names])


def plan_configurations(
    folder: Path,
    manifest: bundle.Manifest,
    settings: BenchSettings,
    modes: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
) -> list[Configuration]:
    """List the bundle's configurations, narrowed to the given modes, precisions, backends."""
    modes = tuple(modes or MODES)
    backends = tuple(backends or (BACKENDS if manifest.gguf else ("onnx",)))
    precisions = tuple(precisions or manifest.precisions)
    missing = [p for p in precisions if p not in manifest.precisions]
    if missing:
        raise BenchError(
            f"{folder}: precision {missing[0]!r} not in this bundle "
            f"(it has {', '.join(manifest.precisions)})"
        )
    if "gguf" in backends and not manifest.gguf:
        raise BenchError(
            f"{folder}: bundle has no {bundle.SHADOW_GGUF}, so it cannot run the gguf backend; "
            "export it with --gguf TYPE or leave gguf out of --backends"
        )

    common = {"bundle": str(folder), "verify_files": settings.verify_files}
    configs = []
    for mode in modes:
        if "onnx" in backends:
            for precision in precisions:
                graphs = ("shadow", "backbone") if mode == "combined" else ("shadow",)
                configs.append(
                    Configuration(
                        id=f"shadow-edge/{mode}/{precision}/onnx",
                        label=f"shadow-edge {mode} {precision} (onnx)",
                        engine="shadow-edge",
                        mode=mode,
                        precision=precision,
                        backend="onnx",
                        options=dict(common),
                        files=_bundle_files(folder, manifest.graph_files(precision, graphs)),
                    )
                )
        if "gguf" in backends and mode == "detached":
            gguf_type = manifest.gguf["type"]
            configs.append(
                Configuration(
                    id=f"shadow-edge/detached/{gguf_type}/gguf",
                    label=f"shadow-edge detached {gguf_type} (gguf)",
                    engine="shadow-edge",
                    mode="detached",
                    precision=gguf_type,
                    backend="gguf",
                    options=dict(common),
                    files=_bundle_files(folder, [manifest.gguf["file"]]),
                )
            )
    if not configs:
        raise BenchError(
            f"no configuration matches modes {', '.join(modes)} with backends "
            f"{', '.join(backends)}; the gguf backend runs the detached mode only"
        )
    return configs


def _missing_module(*modules: str) -> str | None:
    """Return the first module of `modules` that is not installed, or None."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def gguf_quantization(path: str | Path) -> tuple[str, str]:
    """Return a GGUF file's type (like `q4_1`) and a count of its tensors per type.

    Quantized files keep some tensors (norms, often one embedding) in other types, so the
    count shows how much of the file the type name covers.
    """
    if _missing_module("gguf"):
        return "unknown", "install gguf to read the tensor types"
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError) as exc:  # gguf's reader signals a bad header this way
        raise BenchError(f"{path}: cannot read the GGUF file ({exc})") from exc
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    tensors = "tensors " + ", ".join(f"{name} x{count}" for name, count in ordered)
    field_ = reader.fields.get("general.file_type")
    if field_ is None:
        return "unknown", tensors
    number = int(field_.parts[field_.data[0]][0])
    try:
        name = gguf.LlamaFileType(number).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        name = name.lower()
    except ValueError:
        name = f"file-type-{number}"
    return name, tensors


def plan_references(
    folder: Path, manifest: bundle.Manifest, compare: CompareSpec, settings: BenchSettings
) -> tuple[list[Configuration], list[dict[str, str]]]:
    """List the reference rows that can run here, and the skipped ones with the reason."""
    from shadow_edge.checkpoint import Dialect, inspect_adapter

    info = inspect_adapter(compare.adapter)
    base_files = _folder_files(compare.base)
    adapter_files = _folder_files(compare.adapter)
    shadow_files = _folder_files(compare.shadow_model)
    configs: list[Configuration] = []
    skipped: list[dict[str, str]] = []

    def skip(ref_id: str, label: str, reason: str) -> None:
        skipped.append({"id": ref_id, "label": label, "reason": reason})

    hf_options = {
        "base": compare.base,
        "adapter": compare.adapter,
        "shadow_model": compare.shadow_model,
    }
    hf_missing = _missing_module("torch", "transformers")

    if "shadow-peft" in compare.references:
        for mode, inference_mode in (("combined", "base_shadow"), ("detached", "shadow_only")):
            ref_id = f"shadow-peft/{mode}/fp32/torch"
            label = f"shadow-peft {mode} ({inference_mode})"
            missing = hf_missing or _missing_module("shadow_peft")
            if info.dialect is not Dialect.SHADOW_PEFT:
                skip(ref_id, label, "the adapter is in peft's format, which shadow-peft can't load")
            elif missing:
                skip(ref_id, label, f"{missing} is not installed")
            else:
                options = {**hf_options, "inference_mode": inference_mode}
                files = {**base_files, **adapter_files, **shadow_files}
                configs.append(
                    _torch_row(ref_id, label, "shadow-peft", mode, options, files, SHADOW_PEFT_NOTE)
                )

    if "peft" in compare.references:
        peft_adapter, reason = _peft_adapter(compare, info.dialect is Dialect.PEFT)
        missing = hf_missing or _missing_module("peft")
        rows = (
            ("combined", "peft combined (timing only)", PEFT_NOTE),
            ("detached", "peft detached (unload_shadow)", PEFT_DETACHED_NOTE),
        )
        for mode, label, note in rows:
            ref_id = f"peft/{mode}/fp32/torch"
            if reason:
                skip(ref_id, label, reason)
            elif missing:
                skip(ref_id, label, f"{missing} is not installed")
            else:
                if peft_adapter != compare.adapter:
                    note = f"{note}; adapter {peft_adapter}"
                options = {**hf_options, "adapter": peft_adapter}
                files = {**base_files, **_folder_files(peft_adapter), **shadow_files}
                configs.append(_torch_row(ref_id, label, "peft", mode, options, files, note))

    if "transformers" in compare.references:
        ref_id, label = "transformers/base/fp32/torch", "transformers base fp32"
        if hf_missing:
            skip(ref_id, label, f"{hf_missing} is not installed")
        else:
            note = "plain base model without the adapter, KV cache on"
            options = {"base": compare.base}
            configs.append(
                _torch_row(ref_id, label, "transformers", "base", options, base_files, note)
            )

    if "llama.cpp" in compare.references:
        # The smallest context that fits every run, so llama.cpp does not allocate a KV cache
        # for positions the benchmark never uses.
        n_ctx = max(settings.prompt_lengths) + settings.new_tokens + 1
        ggufs = []
        if manifest.gguf:
            path = folder / manifest.gguf["file"]
            ggufs.append(("detached", f"bundle {manifest.gguf['file']}", path))
        else:
            skip("llama.cpp/detached", "llama.cpp bundle GGUF", "the bundle has no GGUF file")
        if compare.base_gguf:
            ggufs.append(("base", "base GGUF", Path(compare.base_gguf).expanduser()))
        else:
            skip("llama.cpp/base", "llama.cpp base GGUF", "no --base-gguf given")
        for mode, what, path in ggufs:
            quantization, tensors = gguf_quantization(path)
            ref_id = f"llama.cpp/{mode}/{quantization}/gguf"
            label = f"llama.cpp {what} ({quantization})"
            if _missing_module("llama_cpp"):
                skip(ref_id, label, "llama_cpp (llama-cpp-python) is not installed")
                continue
            configs.append(
                Configuration(
                    id=ref_id,
                    label=label,
                    engine="llama.cpp",
                    mode=mode,
                    precision=quantization,
                    backend="gguf",
                    options={"gguf": str(path), "n_ctx": n_ctx},
                    files=_file_sizes([path]),
                    note=f"{tensors}; n_ctx {n_ctx}",
                )
            )
    return configs, skipped


def _torch_row(ref_id, label, engine, mode, options, files, note) -> Configuration:
    """Build a reference row that runs a torch library's `generate()` in float32."""
    return Configuration(
        id=ref_id,
        label=label,
        engine=engine,
        mode=mode,
        precision="fp32",
        backend="torch",
        options=options,
        files=files,
        note=note,
    )


def _peft_adapter(compare: CompareSpec, adapter_is_peft: bool) -> tuple[str | None, str | None]:
    """Return the adapter the peft rows load, or None with the reason there is none."""
    if adapter_is_peft:
        return compare.adapter, None
    if compare.peft_adapter:
        from shadow_edge.checkpoint import Dialect, inspect_adapter

        try:
            dialect = inspect_adapter(compare.peft_adapter).dialect
        except ShadowEdgeError as exc:
            raise BenchError(f"--peft-adapter {compare.peft_adapter}: {exc}") from exc
        if dialect is not Dialect.PEFT:
            raise BenchError(
                f"--peft-adapter {compare.peft_adapter}: not a peft ShadowPEFT adapter "
                "(no adapter_config.json with peft_type SHADOW)"
            )
        return compare.peft_adapter, None
    return None, (
        "the adapter is in shadow-peft's format, which peft can't load; pass a peft adapter "
        "of the same size with --peft-adapter"
    )


# --- prompts and machine -------------------------------------------------------------------


def build_prompts(
    folder: Path, manifest: bundle.Manifest, lengths: Sequence[int]
) -> dict[int, list[int]]:
    """Cut prompts of exactly each length from `PROMPT_TEXT` tokenized by the bundle.

    Special tokens are left out, except a leading BOS where the tokenizer adds one.
    """
    from shadow_edge.runtime.text import TextCodec

    codec = TextCodec(folder, manifest.special_tokens, None)
    special = {
        token_id
        for token_id, token in codec.tokenizer.get_added_tokens_decoder().items()
        if token.special
    }
    text_ids = [t for t in codec.encode(PROMPT_TEXT) if t not in special]
    if not text_ids:
        raise BenchError(
            f"{folder / TOKENIZER_FILE}: the benchmark text encodes to special tokens only; "
            "the bundle's tokenizer cannot make plain prompts"
        )
    special_tokens = manifest.special_tokens
    prefix = []
    if special_tokens.get("add_bos_token") and special_tokens.get("bos_token_id") is not None:
        prefix = [int(special_tokens["bos_token_id"])]
    prompts = {}
    for length in lengths:
        body_length = max(length - len(prefix), 0)
        repeats = body_length // len(text_ids) + 1
        prompts[length] = (prefix + (text_ids * repeats)[:body_length])[:length]
    return prompts


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or what `platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        logger.debug("no /proc/cpuinfo; using platform.processor()")
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    from shadow_edge.runtime.backends import physical_cores

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_bytes": None,
    }
    if not _missing_module("psutil"):
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    return info


# --- running -------------------------------------------------------------------------------


class WorkerError(ShadowEdgeError):
    """A worker process exited without a result."""


def run_worker(
    config: Configuration,
    settings: BenchSettings,
    prompts: dict[int, list[int]],
    workdir: Path,
) -> dict[str, Any]:
    """Measure one configuration in a fresh Python process and return its figures."""
    spec = {
        "config": config.worker_config(),
        "settings": settings.to_dict(),
        "prompts": {str(length): ids for length, ids in prompts.items()},
        "log_level": logging.getLogger().getEffectiveLevel(),
    }
    spec_path = workdir / (re.sub(r"[^\w.-]+", "_", config.id) + ".json")
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    threads = str(settings.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "shadow_edge.bench_worker", str(spec_path)]
    logger.info("running %s: %s", config.id, " ".join(command))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in proc.stderr.splitlines():
        logger.debug("%s worker: %s", config.id, line)

    result = None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            logger.debug("%s worker printed invalid JSON: %s", config.id, lines[-1])
    if proc.returncode == 0 and result is not None and "error" not in result:
        return result
    if result is not None and "error" in result:
        reason = result["error"]
    else:
        last = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = last[-1].strip() if last else f"exit status {proc.returncode}"
    raise WorkerError(reason)


Progress = Callable[[int, int, str | None], None]


def check_context(folder: Path, manifest: bundle.Manifest, settings: BenchSettings) -> None:
    """Reject prompt lengths and token counts that do not fit the bundle's context."""
    context = manifest.context_length
    longest = max(settings.prompt_lengths)
    if longest >= context:
        raise BenchError(
            f"{folder}: prompt length {longest} does not fit the context length {context}; "
            f"use prompt lengths below {context}"
        )
    decode_end = settings.decode_prompt_length + settings.new_tokens
    if decode_end >= context:
        raise BenchError(
            f"{folder}: the decode run needs {settings.decode_prompt_length} prompt tokens + "
            f"{settings.new_tokens} new tokens, which does not fit the context length "
            f"{context}; lower --new-tokens or the shortest prompt length"
        )


def run_bench(
    bundle_dir: str | Path,
    settings: BenchSettings | None = None,
    *,
    modes: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
    compare: CompareSpec | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Measure every selected configuration of a bundle and return the report.

    `progress(done, total, label)` is called before each configuration runs and once more
    with `label=None` at the end. A bundle configuration that fails raises `BenchError`.
    A reference that fails is listed under `skipped` with the reason.
    """
    settings = settings or BenchSettings()
    folder = Path(bundle_dir).expanduser().resolve()
    # Workers check every file's sha256 when they load (unless `verify_files` is off), so
    # this read of the manifest skips the check.
    manifest = bundle.read_manifest(folder, verify_files=False)
    check_context(folder, manifest, settings)
    if settings.threads > (os.cpu_count() or 1):
        logger.warning(
            "%d threads requested but this machine has %d logical CPUs",
            settings.threads,
            os.cpu_count() or 1,
        )

    configs = plan_configurations(folder, manifest, settings, modes, precisions, backends)
    skipped: list[dict[str, str]] = []
    if compare is not None:
        references, skipped = plan_references(folder, manifest, compare, settings)
        configs += references
    prompts = build_prompts(folder, manifest, settings.prompt_lengths)

    rows = []
    with tempfile.TemporaryDirectory(prefix="shadow-edge-bench-") as tmp:
        for index, config in enumerate(configs):
            if progress is not None:
                progress(index, len(configs), config.label)
            try:
                measured = run_worker(config, settings, prompts, Path(tmp))
            except WorkerError as exc:
                if config.engine == "shadow-edge":
                    raise BenchError(
                        f"{config.label} failed: {str(exc).rstrip('.')}. "
                        "Rerun with --debug to see the worker's log."
                    ) from exc
                logger.warning("%s failed, so it is left out: %s", config.label, exc)
                skipped.append({"id": config.id, "label": config.label, "reason": str(exc)})
                continue
            rows.append({**config.describe(), **measured})
    if progress is not None:
        progress(len(configs), len(configs), None)

    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "shadow_edge": shadow_edge.__version__,
        "bundle": str(folder),
        "settings": settings.to_dict(),
        "machine": machine_info(),
        "prompt_token_ids": {str(length): ids for length, ids in prompts.items()},
        "rows": rows,
        "skipped": skipped,
        "ratios": compute_ratios(rows),
    }


# --- ratios --------------------------------------------------------------------------------

COMBINED_INT8 = "shadow-edge/combined/int8/onnx"
DETACHED_INT8 = "shadow-edge/detached/int8/onnx"


@dataclass(frozen=True)
class RatioSpec:
    """A ratio the project targets: numerator row's figure over denominator row's."""

    name: str
    numerator: str  # row id
    denominator: str  # row id, or a row-id prefix (the first matching row)
    metric: str  # "decode_tps", "memory_vs_disk" or "added_memory_vs_disk"
    target: float | None  # None: reported only
    at_least: bool = True  # the target is a minimum (else a maximum)


RATIOS = (
    RatioSpec(
        "combined int8 decode vs shadow-peft combined generate",
        COMBINED_INT8,
        "shadow-peft/combined/",
        "decode_tps",
        10.0,
    ),
    RatioSpec(
        "combined int8 decode vs peft cached generate",
        COMBINED_INT8,
        "peft/combined/",
        "decode_tps",
        2.0,
    ),
    RatioSpec(
        "combined int8 decode vs transformers fp32 base generate",
        COMBINED_INT8,
        "transformers/base/",
        "decode_tps",
        2.0,
    ),
    RatioSpec(
        "combined int8 decode vs llama.cpp base GGUF",
        COMBINED_INT8,
        "llama.cpp/base/",
        "decode_tps",
        None,
    ),
    RatioSpec(
        "detached int8 decode vs combined int8 decode",
        DETACHED_INT8,
        COMBINED_INT8,
        "decode_tps",
        3.0,
    ),
    RatioSpec(
        "detached int8 decode vs shadow-peft detached generate",
        DETACHED_INT8,
        "shadow-peft/detached/",
        "decode_tps",
        None,
    ),
    RatioSpec(
        "detached int8 decode vs peft unloaded shadow",
        DETACHED_INT8,
        "peft/detached/",
        "decode_tps",
        None,
    ),
    RatioSpec(
        "combined int8 peak memory vs its files on disk",
        COMBINED_INT8,
        COMBINED_INT8,
        "memory_vs_disk",
        1.5,
        at_least=False,
    ),
    # The same without the interpreter and the libraries, whose size does not grow with
    # the model: peak RSS minus RSS after the imports, before the load.
    RatioSpec(
        "combined int8 memory added by load and generation vs its files on disk",
        COMBINED_INT8,
        COMBINED_INT8,
        "added_memory_vs_disk",
        None,
        at_least=False,
    ),
)


def _find_row(rows: list[dict[str, Any]], row_id: str) -> dict[str, Any] | None:
    for row in rows:
        if row["id"] == row_id or (row_id.endswith("/") and row["id"].startswith(row_id)):
            return row
    return None


def compute_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compute the target ratios from the rows of one run; a missing row gives None."""
    ratios = []
    for spec in RATIOS:
        numerator = _find_row(rows, spec.numerator)
        denominator = _find_row(rows, spec.denominator)
        value = None
        if numerator is not None and denominator is not None:
            disk = numerator.get("disk_bytes")
            before = numerator.get("rss_before_load_bytes")
            if spec.metric == "memory_vs_disk":
                value = numerator["peak_rss_bytes"] / disk if disk else None
            elif spec.metric == "added_memory_vs_disk":
                if disk and before is not None:
                    value = (numerator["peak_rss_bytes"] - before) / disk
            else:
                value = numerator["decode_tps"]["median"] / denominator["decode_tps"]["median"]
        met = None
        if value is not None and spec.target is not None:
            met = value >= spec.target if spec.at_least else value <= spec.target
        ratios.append(
            {
                "name": spec.name,
                "value": value,
                "target": spec.target,
                "target_is_minimum": spec.at_least,
                "met": met,
                "numerator": numerator["id"] if numerator else spec.numerator,
                "denominator": denominator["id"] if denominator else spec.denominator,
            }
        )
    return ratios


# --- output --------------------------------------------------------------------------------


def check_output_file(option: str, path: str | Path) -> Path:
    """Return `path` if its folder exists and it is not a folder itself."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise BenchError(f"{option} {path} is a folder; pass a file name")
    if not out.parent.is_dir():
        raise BenchError(f"{option} {path}: folder {out.parent} not found; create it first")
    return out


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    out = Path(path).expanduser()
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return out


def require_matplotlib() -> None:
    if _missing_module("matplotlib"):
        raise BenchError("--chart needs matplotlib; install shadow-edge[bench]")


def write_chart(report: dict[str, Any], path: str | Path) -> Path:
    """Draw time to first token per prompt length and decode speed per row as a PNG.

    Bars show medians and whiskers the min-max range over the repetitions.
    """
    require_matplotlib()
    # Figure without pyplot draws with the Agg canvas and leaves the global backend alone.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = report["rows"]
    if not rows:
        raise BenchError("the report has no measured rows to chart")
    labels = [row["label"] for row in rows]
    lengths = report["settings"]["prompt_lengths"]
    positions = list(range(len(rows)))
    height = 0.8 / len(lengths)

    figure = Figure(figsize=(13, 1.5 + 0.5 * len(rows) * max(1, len(lengths) / 2)))
    ttft_axes, decode_axes = figure.subplots(1, 2, sharey=True)
    for k, length in enumerate(lengths):
        stats = [row["ttft_s"][str(length)] for row in rows]
        medians = [s["median"] * 1000 for s in stats]
        errors = [
            [(s["median"] - s["min"]) * 1000 for s in stats],
            [(s["max"] - s["median"]) * 1000 for s in stats],
        ]
        offsets = [p + (k - (len(lengths) - 1) / 2) * height for p in positions]
        ttft_axes.barh(offsets, medians, height, xerr=errors, label=f"{length} tokens")
    ttft_axes.set_xscale("log")
    ttft_axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ttft_axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ttft_axes.xaxis.set_minor_formatter(NullFormatter())
    ttft_axes.set_xlabel("time to first token (ms, log scale)")
    ttft_axes.set_yticks(positions, labels)
    ttft_axes.invert_yaxis()
    ttft_axes.legend(title="prompt")

    decode = [row["decode_tps"] for row in rows]
    decode_axes.barh(
        positions,
        [s["median"] for s in decode],
        0.6,
        xerr=[
            [s["median"] - s["min"] for s in decode],
            [s["max"] - s["median"] for s in decode],
        ],
        color="tab:green",
    )
    settings = report["settings"]
    decode_axes.set_xlabel(
        f"decode tokens/s ({settings['new_tokens']} new tokens after "
        f"{settings['decode_prompt_length']} prompt tokens)"
    )
    figure.suptitle(
        f"shadow-edge bench on {report['machine']['cpu_model']}, threads: {settings['threads']}"
    )
    figure.tight_layout()
    out = Path(path).expanduser()
    figure.savefig(out, format="png", dpi=110)
    return out
