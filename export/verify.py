"""`shadow-edge verify`: measure a bundle against the library that trained its adapter.

For each precision in the bundle and each mode (combined, detached):
- greedy parity: the runtime decodes up to `max_new_tokens` greedily with its KV cache;
  the reference then scores prompt + continuation in one full forward. Every runtime token
  must be the reference's argmax at that step, so the two greedy continuations are equal.
  A step where the reference's top-2 logits lie within `TIE_MARGIN` may go either way; it
  is reported, not failed.
- max |logit difference| over all those positions, relative to the largest reference logit;
- teacher-forced top-1 agreement on held-out answers (prompt + the dataset's answer);
- optionally, demo-task exact match of the runtime's own greedy answers.
For the GGUF file: llama.cpp's greedy answers against the ONNX detached graph's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shadow_edge import bundle as bundle_names
from shadow_edge.bundle import read_manifest
from shadow_edge.errors import ShadowEdgeError
from shadow_edge.models import intent_task
from shadow_edge.runtime.model import ShadowEdgeModel
from shadow_edge.runtime.text import TextCodec

logger = logging.getLogger(__name__)

TIE_MARGIN = 1e-4
# Pass thresholds per (precision, mode): max relative logit error, minimum teacher-forced
# top-1 agreement with the fp32 reference, and whether greedy continuations must match.
# The detached shadow is a much weaker model with many near-tied logits, so quantization
# flips more of its top-1 choices; its floors are lower.
THRESHOLDS = {
    ("fp32", "combined"): {"relative_logit_error": 1e-3, "top1": 1.0, "greedy_exact": True},
    ("fp32", "detached"): {"relative_logit_error": 1e-3, "top1": 1.0, "greedy_exact": True},
    ("int8", "combined"): {"relative_logit_error": None, "top1": 0.98, "greedy_exact": False},
    ("int8", "detached"): {"relative_logit_error": None, "top1": 0.95, "greedy_exact": False},
    ("int4", "combined"): {"relative_logit_error": None, "top1": 0.95, "greedy_exact": False},
    ("int4", "detached"): {"relative_logit_error": None, "top1": 0.90, "greedy_exact": False},
}
GGUF_MIN_MATCH = 0.90


@dataclass
class ModeReport:
    """Parity of one precision in one mode against the reference."""

    precision: str
    mode: str
    prompts: int
    max_abs_logit_diff: float = 0.0
    relative_logit_diff: float = 0.0
    greedy_top1_agreement: float = 0.0
    greedy_matches: int = 0
    teacher_forced_top1: float = 0.0
    ties: list[dict] = field(default_factory=list)
    exact_match: float | None = None
    passed: bool = False
    failures: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    modes: list[ModeReport]
    file_sizes: dict[str, int]
    gguf: dict | None = None

    @property
    def passed(self) -> bool:
        gguf_ok = self.gguf is None or self.gguf.get("passed", True)
        return all(m.passed for m in self.modes) and gguf_ok

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "modes": [asdict(m) for m in self.modes],
            "file_sizes": self.file_sizes,
            "gguf": self.gguf,
        }


def default_prompts(n: int) -> list[tuple[list[dict], str]]:
    """Held-out demo prompts as chat messages, with their reference answers."""
    _, test = intent_task.make_splits()
    return [(intent_task.chat_messages(e.command), e.answer) for e in test[:n]]


def _reference(spec, ids: list[int], detached: bool) -> np.ndarray:
    with torch.no_grad():
        logits = spec.reference_logits(torch.tensor([ids]), detached)
    return logits[0].float().numpy()


def _greedy_parity(runtime, spec, report, prompt_ids, max_new_tokens, detached, check_logits):
    result = runtime.generate(prompt_ids, max_new_tokens=max_new_tokens, temperature=0.0)
    # The EOS token is part of the continuation: it must be predicted too.
    sequence = prompt_ids + result.tokens
    ref = _reference(spec, sequence, detached)
    start = len(prompt_ids) - 1
    ref_steps = ref[start : len(sequence) - 1]
    agree, matched = 0, True
    for step, (row, token) in enumerate(zip(ref_steps, result.tokens)):
        best = int(np.argmax(row))
        if best == token:
            agree += 1
            continue
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] <= TIE_MARGIN or row[token] >= top2[1] - TIE_MARGIN:
            report.ties.append({"step": step, "runtime": token, "reference": best})
            agree += 1
            continue
        matched = False
        break
    report.greedy_matches += int(matched)
    report.greedy_top1_agreement += agree / max(1, len(result.tokens))
    if check_logits:
        ours = runtime.logits(sequence)
        diff = float(np.abs(ours - ref).max())
        report.max_abs_logit_diff = max(report.max_abs_logit_diff, diff)
        scale = float(np.abs(ref).max())
        report.relative_logit_diff = max(report.relative_logit_diff, diff / scale)


def _teacher_forced(runtime, spec, prompt_ids, answer_ids, detached) -> tuple[int, int]:
    sequence = prompt_ids + answer_ids
    ref = _reference(spec, sequence, detached)
    ours = runtime.logits(sequence)
    start = len(prompt_ids) - 1
    positions = range(start, len(sequence) - 1)
    agree = sum(int(np.argmax(ours[p]) == np.argmax(ref[p])) for p in positions)
    return agree, len(positions)


def task_exact_match(runtime: ShadowEdgeModel, n: int, max_new_tokens: int = 48) -> float:
    """Exact match of the runtime's greedy answers on the first `n` held-out examples."""
    _, test = intent_task.make_splits()
    examples = test[:n]
    answers = [
        runtime.generate(
            intent_task.chat_messages(e.command), max_new_tokens=max_new_tokens, temperature=0.0
        ).text
        for e in examples
    ]
    return intent_task.score(answers, examples)["exact_match"]


def check_context(
    bundle_dir: str | Path,
    num_prompts: int,
    task_examples: int = 0,
    gguf_prompts: int = 0,
) -> None:
    """Raise when verify's held-out prompts with their answers do not fit the bundle's context.

    Needs only the manifest and tokenizer, so callers run it before loading any model.
    """
    folder = Path(bundle_dir)
    manifest = read_manifest(folder, verify_files=False)
    codec = TextCodec(folder, manifest.special_tokens, manifest.chat_template)
    examples = max(num_prompts, task_examples, gguf_prompts if manifest.gguf else 0)
    longest = 0
    for messages, answer in default_prompts(examples):
        prompt = len(codec.encode_chat(messages))
        answer_tokens = len(codec.encode(answer)) + 1  # the reference answer and its EOS
        longest = max(longest, prompt + answer_tokens)
    if longest > manifest.context_length:
        raise ShadowEdgeError(
            f"the bundle's context length is {manifest.context_length} tokens, but verify's "
            f"held-out prompts with their answers need up to {longest}. Export with "
            f"--context-length {longest} or more to verify this model."
        )


def verify_bundle(
    bundle_dir: str | Path,
    spec,
    *,
    num_prompts: int = 16,
    max_new_tokens: int = 64,
    task_examples: int = 0,
    threads: int | None = None,
    gguf_prompts: int = 100,
    on_progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Compare every precision and mode of a bundle with the reference model in `spec`."""
    folder = Path(bundle_dir)
    manifest = read_manifest(folder)
    check_context(folder, num_prompts, task_examples, gguf_prompts)
    prompts = default_prompts(num_prompts)
    modes: list[ModeReport] = []
    for precision in manifest.precisions:
        for mode in ("combined", "detached"):
            if on_progress:
                on_progress(f"{precision} {mode}")
            runtime = ShadowEdgeModel(
                folder, mode=mode, precision=precision, threads=threads, verify_files=False
            )
            detached = mode == "detached"
            report = ModeReport(precision=precision, mode=mode, prompts=len(prompts))
            agree = total = 0
            for messages, answer in prompts:
                prompt_ids = runtime.encode(messages)
                _greedy_parity(
                    runtime, spec, report, prompt_ids, max_new_tokens, detached, check_logits=True
                )
                answer_ids = runtime.codec.encode(answer) + sorted(runtime.eos_ids)[:1]
                a, t = _teacher_forced(runtime, spec, prompt_ids, answer_ids, detached)
                agree, total = agree + a, total + t
            report.greedy_top1_agreement /= max(1, len(prompts))
            report.teacher_forced_top1 = agree / max(1, total)
            if task_examples:
                report.exact_match = task_exact_match(runtime, task_examples)
            _judge(report)
            modes.append(report)

    sizes = {name: (folder / name).stat().st_size for name in manifest.files}
    gguf = None
    if manifest.gguf:
        if on_progress:
            on_progress("gguf")
        # llama.cpp and the detached graph are cheap, so the GGUF gets more prompts.
        gguf = verify_gguf(folder, manifest, default_prompts(gguf_prompts), max_new_tokens, threads)
    return VerifyReport(modes=modes, file_sizes=sizes, gguf=gguf)


def _judge(report: ModeReport) -> None:
    limits = THRESHOLDS[report.precision, report.mode]
    if limits["relative_logit_error"] is not None:
        if report.relative_logit_diff > limits["relative_logit_error"]:
            report.failures.append(
                f"relative logit error {report.relative_logit_diff:.2e} > "
                f"{limits['relative_logit_error']:.0e}"
            )
    if report.teacher_forced_top1 < limits["top1"]:
        report.failures.append(
            f"teacher-forced top-1 {report.teacher_forced_top1:.3f} < {limits['top1']}"
        )
    if limits["greedy_exact"] and report.greedy_matches < report.prompts:
        report.failures.append(
            f"greedy continuations match on {report.greedy_matches} of {report.prompts} prompts"
        )
    report.passed = not report.failures


def verify_gguf(folder, manifest, prompts, max_new_tokens, threads) -> dict:
    """Compare llama.cpp's greedy output on the GGUF with the ONNX detached graph's."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (shadow-edge[gguf])", "passed": True}
    onnx_precision = "fp32" if "fp32" in manifest.precisions else manifest.precisions[0]
    onnx = ShadowEdgeModel(
        folder, mode="detached", precision=onnx_precision, threads=threads, verify_files=False
    )
    gguf = ShadowEdgeModel(
        folder, mode="detached", backend="gguf", threads=threads, verify_files=False
    )
    full = first32 = 0
    for messages, _ in prompts:
        ids = onnx.encode(messages)
        a = onnx.generate(ids, max_new_tokens=max_new_tokens, temperature=0.0).tokens
        b = gguf.generate(ids, max_new_tokens=max_new_tokens, temperature=0.0).tokens
        full += int(a == b)
        first32 += int(a[:32] == b[:32])
    n = max(1, len(prompts))
    result = {
        "type": manifest.gguf["type"],
        "compared_with": f"onnx detached {onnx_precision}",
        "prompts": len(prompts),
        "greedy_match": full / n,
        "first32_match": first32 / n,
        "size": (folder / bundle_names.SHADOW_GGUF).stat().st_size,
    }
    key = "first32_match" if manifest.gguf["type"] in ("f16", "f32") else "greedy_match"
    result["passed"] = result[key] >= GGUF_MIN_MATCH
    return result
