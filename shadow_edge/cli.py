"""`shadow-edge` command line: a thin dispatcher to one function per verb.

User errors (`ShadowEdgeError`) print one line and exit with status 2; `--debug` shows the
traceback. Verbs that need torch import it only when they run, so `run` works with the
runtime install alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from shadow_edge import bundle
from shadow_edge.errors import ShadowEdgeError

logger = logging.getLogger("shadow_edge")

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a base model + shadow adapter to a bundle")
    p.add_argument("--base", required=True, help="base model folder or hub id")
    p.add_argument("--adapter", required=True, help="shadow adapter folder (shadow-peft or peft)")
    p.add_argument("--shadow-model", help="explicit shadow model folder, when the adapter uses one")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="write float32 graphs (the default when no other precision is given)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="write int8 graphs (weight-only 8-bit MatMulNBits, int8 embeddings)",
    )
    p.add_argument("--int4", action="store_true", help="write 4-bit block-quantized graphs")
    p.add_argument(
        "--int4-block-size",
        type=int,
        help="weights per int4 block along each MatMul's input dimension: a power of two "
        ">= 16 (default 32; with --int4)",
    )
    p.add_argument(
        "--int4-scheme",
        choices=bundle.INT4_SCHEMES,
        help="affine: a scale and a minimum per block, like llama.cpp's Q4_1 (default); "
        "symmetric: one scale per block, smaller and less accurate (with --int4)",
    )
    p.add_argument(
        "--gguf",
        metavar="TYPE",
        help="also write shadow.gguf for llama.cpp: f32, f16, q8_0, q4_k_m, ...",
    )
    p.add_argument("--context-length", type=int, help="maximum sequence length (tokens)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=cmd_export)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="compare a bundle with the reference library's forward")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--base", required=True, help="base model folder or hub id")
    p.add_argument("--adapter", required=True, help="shadow adapter folder")
    p.add_argument("--shadow-model", help="explicit shadow model folder")
    p.add_argument("--prompts", type=int, default=16, help="held-out prompts for parity (16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="greedy tokens per prompt (64)")
    p.add_argument(
        "--gguf-prompts",
        type=int,
        default=100,
        help="held-out prompts for the GGUF against the ONNX detached graph (100)",
    )
    p.add_argument(
        "--task-examples",
        type=int,
        default=0,
        help="also measure demo-task exact match on this many held-out examples",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_verify)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="generate with a bundle (no torch needed)")
    p.add_argument("bundle", help="bundle folder")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="prompt text (rendered as one user chat message)")
    group.add_argument("--chat", action="store_true", help="interactive chat")
    p.add_argument(
        "--raw", action="store_true", help="send --prompt as is, without the chat template"
    )
    p.add_argument("--system", help="system message for chat prompts")
    p.add_argument("--detached", action="store_true", help="run the shadow graph alone")
    p.add_argument("--backend", choices=("onnx", "gguf"), default="onnx")
    p.add_argument("--precision", help="graph precision in the bundle (fp32, int8, int4)")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--truncate", action="store_true", help="keep the last tokens of a prompt too long"
    )
    p.add_argument("--json", action="store_true", help="print the result and stats as JSON")
    p.set_defaults(func=cmd_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shadow-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_verify(sub)
    _add_run(sub)
    from shadow_edge.bench_cli import add_bench

    add_bench(sub)
    # Accept --debug after the command too. SUPPRESS keeps an absent flag from resetting
    # the value parsed before the command.
    for command in sub.choices.values():
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def cmd_export(args) -> int:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from shadow_edge.export.exporter import export_bundle

    precisions = [p for p in ("fp32", "int8", "int4") if getattr(args, p)] or ["fp32"]
    # Unset int4 options keep export_bundle's defaults. Set ones need --int4.
    int4_settings = {"int4_block_size": args.int4_block_size, "int4_scheme": args.int4_scheme}
    for name, value in int4_settings.items():
        if value is not None and "int4" not in precisions:
            option = "--" + name.replace("_", "-")
            raise ShadowEdgeError(f"{option} applies to int4 graphs only. Add --int4 or drop it.")
    _quiet_transformers(args.debug)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False
    ) as progress:
        task = None

        def on_stage(name: str) -> None:
            nonlocal task
            if task is not None:
                progress.update(task, completed=1, total=1)
            task = progress.add_task(name, total=None)

        out = export_bundle(
            args.base,
            args.adapter,
            args.output,
            shadow_model=args.shadow_model,
            precisions=precisions,
            **{k: v for k, v in int4_settings.items() if v is not None},
            gguf_type=args.gguf,
            context=args.context_length,
            force=args.force,
            on_stage=on_stage,
        )
        if task is not None:
            progress.update(task, completed=1, total=1)
    print(f"wrote {out}")
    return 0


def _quiet_transformers(debug: bool) -> None:
    """Hide transformers' loading bars and deprecation notices, which are not the user's to fix.

    shadow-peft 0.1.1 passes `past_key_values`, which transformers 5 reports as deprecated on
    every forward call of the reference model. `--debug` keeps all of it.
    """
    if debug:
        return
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings(
        "ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning
    )


def cmd_verify(args) -> int:
    from shadow_edge.export.load import load_model

    for name in ("prompts", "max_new_tokens", "gguf_prompts"):
        if getattr(args, name) < 1:
            raise ShadowEdgeError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    from shadow_edge.export.verify import check_context, verify_bundle
    from shadow_edge.report import print_verify_table

    # A bad bundle path or a short context fails before the slow model load.
    check_context(args.bundle, args.prompts, args.task_examples, args.gguf_prompts)
    _quiet_transformers(args.debug)
    spec = load_model(args.base, args.adapter, shadow_model=args.shadow_model)
    report = verify_bundle(
        args.bundle,
        spec,
        num_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        task_examples=args.task_examples,
        threads=args.threads,
        gguf_prompts=args.gguf_prompts,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_verify_table(report)
    return 0 if report.passed else EXIT_CHECK_FAILED


def _sampling_kwargs(args) -> dict:
    names = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")
    kwargs = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    kwargs["stop"] = args.stop
    kwargs["truncate"] = args.truncate
    return kwargs


def cmd_run(args) -> int:
    from shadow_edge.runtime import load

    model = load(
        args.bundle,
        mode="detached" if args.detached else "combined",
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
    )
    kwargs = _sampling_kwargs(args)
    if args.chat:
        return _chat_loop(model, args.system, kwargs)
    if args.raw:
        prompt = args.prompt
    else:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
    if args.json:
        result = model.generate(prompt, **kwargs)
        out = {
            "text": result.text,
            "tokens": result.tokens,
            "probabilities": [round(p, 6) for p in result.probabilities],
            "confidence": result.confidence,
            "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens,
            "time_to_first_token_s": result.time_to_first_token,
            "prompt_tokens_per_s": result.prompt_tps,
            "generation_tokens_per_s": result.generation_tps,
            "finish_reason": result.finish_reason,
            "mode": model.mode,
            "backend": model.backend_name,
            "precision": model.precision,
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    last = None
    for step in model.stream(prompt, **kwargs):
        sys.stdout.write(step.text)
        sys.stdout.flush()
        last = step
    sys.stdout.write("\n")
    if last is not None:
        print(
            f"[{last.generated_tokens} tokens, {last.generation_tps:.1f} tok/s, "
            f"first token {last.time_to_first_token * 1000:.0f} ms, {last.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _chat_loop(model, system: str | None, kwargs: dict) -> int:
    """A small REPL; Ctrl-C stops the current answer, Ctrl-D or /exit quits, /reset forgets."""
    messages = [{"role": "system", "content": system}] if system else []
    print(
        "chat: /reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer", file=sys.stderr
    )
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if system else []
            model.reset()
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        try:
            for step in model.stream(messages, **kwargs):
                sys.stdout.write(step.text)
                sys.stdout.flush()
                reply.append(step.text)
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        except ShadowEdgeError as exc:
            messages.pop()
            print(f"error: {exc}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ShadowEdgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
