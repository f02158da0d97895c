"""The `shadow-edge bench` verb: options, a progress bar and the result tables."""

from __future__ import annotations

from typing import Any

from shadow_edge import bench
from shadow_edge.bench import BenchError

MIB = 2**20


def add_bench(sub) -> None:
    """Register the `bench` verb on the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="measure load time, latency, decode speed, memory and size of a bundle",
        description=(
            "Run every configuration of a bundle (mode x precision x backend) in its own "
            "process and report load time, time to first token, decode tokens/s, peak "
            "memory and files on disk. With --compare, also measure the reference "
            "libraries on the same prompt token ids."
        ),
    )
    p.add_argument("bundle", help="bundle folder")

    p.add_argument(
        "--prompt-lengths",
        metavar="N,N,...",
        default=",".join(map(str, bench.DEFAULT_PROMPT_LENGTHS)),
        help="comma-separated prompt lengths in tokens for time to first token (32,128,512); "
        "the decode run follows the 128-token prompt, or the shortest when 128 is not listed",
    )
    p.add_argument(
        "--new-tokens",
        metavar="N",
        default=str(bench.DEFAULT_NEW_TOKENS),
        help=f"tokens generated per decode run, EOS ignored ({bench.DEFAULT_NEW_TOKENS})",
    )
    p.add_argument(
        "--repeats",
        metavar="N",
        default=str(bench.DEFAULT_REPEATS),
        help=f"timed repetitions after one warm-up pass ({bench.DEFAULT_REPEATS})",
    )
    p.add_argument(
        "--threads",
        metavar="N",
        default=str(bench.DEFAULT_THREADS),
        help=f"CPU threads for every engine ({bench.DEFAULT_THREADS})",
    )

    p.add_argument(
        "--modes", metavar="LIST", help="comma-separated modes to run (combined,detached)"
    )
    p.add_argument(
        "--precisions", metavar="LIST", help="comma-separated ONNX precisions (default: all)"
    )
    p.add_argument(
        "--backends", metavar="LIST", help="comma-separated backends (onnx, and gguf if present)"
    )
    p.add_argument(
        "--skip-checksums",
        action="store_true",
        help="load without the sha256 check of every bundle file (the runtime checks by default)",
    )

    p.add_argument(
        "--compare",
        action="store_true",
        help="add reference rows: shadow-peft or peft, transformers, llama.cpp",
    )
    p.add_argument("--base", metavar="DIR", help="base model folder, for --compare")
    p.add_argument("--adapter", metavar="DIR", help="shadow adapter folder, for --compare")
    p.add_argument(
        "--shadow-model", metavar="DIR", help="explicit shadow model folder, for --compare"
    )
    p.add_argument("--base-gguf", metavar="PATH", help="GGUF of the base model, for --compare")
    p.add_argument(
        "--peft-adapter",
        metavar="DIR",
        help="peft ShadowPEFT adapter for the peft rows when --adapter is a shadow-peft one",
    )
    p.add_argument(
        "--references",
        metavar="LIST",
        help=f"comma-separated references for --compare (default: {','.join(bench.REFERENCES)})",
    )

    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    p.add_argument("--chart", metavar="PATH", help="also draw a PNG chart")
    p.add_argument(
        "--markdown", metavar="PATH", help="also write the tables as Markdown (for a README)"
    )
    p.set_defaults(func=cmd_bench)


def _compare_spec(args) -> bench.CompareSpec | None:
    if not args.compare:
        compare_only = [
            option
            for option, value in (
                ("--base", args.base),
                ("--adapter", args.adapter),
                ("--shadow-model", args.shadow_model),
                ("--base-gguf", args.base_gguf),
                ("--peft-adapter", args.peft_adapter),
                ("--references", args.references),
            )
            if value
        ]
        if compare_only:
            raise BenchError(f"{compare_only[0]} is used only with --compare; add --compare")
        return None
    if not args.base or not args.adapter:
        raise BenchError(
            "--compare needs --base and --adapter (the base model and adapter the bundle was "
            "exported from)"
        )
    references = bench.REFERENCES
    if args.references is not None:
        references = bench.parse_choices("--references", args.references, bench.REFERENCES)
    return bench.CompareSpec(
        base=args.base,
        adapter=args.adapter,
        shadow_model=args.shadow_model,
        base_gguf=args.base_gguf,
        references=references,
        peft_adapter=args.peft_adapter,
    )


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    settings = bench.BenchSettings(
        prompt_lengths=bench.parse_counts("--prompt-lengths", args.prompt_lengths),
        new_tokens=bench.parse_count("--new-tokens", args.new_tokens, minimum=2),
        repeats=bench.parse_count("--repeats", args.repeats),
        threads=bench.parse_count("--threads", args.threads),
        verify_files=not args.skip_checksums,
    )
    modes = bench.parse_choices("--modes", args.modes, bench.MODES) if args.modes else None
    precisions = None
    if args.precisions:
        precisions = bench.parse_choices("--precisions", args.precisions, ("fp32", "int8", "int4"))
    backends = None
    if args.backends:
        backends = bench.parse_choices("--backends", args.backends, bench.BACKENDS)
    compare = _compare_spec(args)
    json_path = bench.check_output_file("--json", args.json) if args.json else None
    markdown_path = None
    if args.markdown:
        markdown_path = bench.check_output_file("--markdown", args.markdown)
    chart_path = None
    if args.chart:
        chart_path = bench.check_output_file("--chart", args.chart)
        bench.require_matplotlib()

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("bench", total=None)

        def on_progress(done: int, total: int, label: str | None) -> None:
            description = f"bench: {label}" if label else "bench: done"
            progress.update(task, completed=done, total=total, description=description)

        report = bench.run_bench(
            args.bundle,
            settings,
            modes=modes,
            precisions=precisions,
            backends=backends,
            compare=compare,
            progress=on_progress,
        )

    console = Console()
    print_report(report, console)
    if json_path is not None:
        bench.write_json(report, json_path)
        console.print(f"wrote {json_path}")
    if chart_path is not None:
        bench.write_chart(report, chart_path)
        console.print(f"wrote {chart_path}")
    if markdown_path is not None:
        markdown_path.write_text(markdown_report(report), encoding="utf-8")
        console.print(f"wrote {markdown_path}")
    return 0


# --- tables --------------------------------------------------------------------------------


def _median_range(stats: dict[str, Any], scale: float = 1.0) -> str:
    """Format "median (min-max)", with more decimals for small figures."""
    median, low, high = (stats[k] * scale for k in ("median", "min", "max"))
    digits = 0
    if median < 10:
        digits = 2
    elif median < 100:
        digits = 1
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _row_cells(row: dict[str, Any], lengths: list[int]) -> list[str]:
    """Format a report row as table cells, in the order of the table's columns."""
    return [
        row["label"],
        _median_range(row["load_s"], 1000),
        *(_median_range(row["ttft_s"][str(n)], 1000) for n in lengths),
        _median_range(row["decode_tps"]),
        _mib(row["peak_rss_bytes"]),
        _mib(row["disk_bytes"]),
    ]


def print_report(report: dict[str, Any], console) -> None:
    from rich.table import Table

    settings = report["settings"]
    machine = report["machine"]
    table = Table(
        title=(
            f"shadow-edge bench on {machine['cpu_model']}, threads: {settings['threads']}, "
            f"median (min-max) of timed runs: {settings['repeats']}"
        )
    )
    table.add_column("configuration")
    table.add_column("load ms", justify="right")
    for length in settings["prompt_lengths"]:
        table.add_column(f"first token ms @{length}", justify="right")
    table.add_column(f"decode tok/s ({settings['new_tokens']})", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    table.add_column("disk MiB", justify="right")
    for row in report["rows"]:
        table.add_row(*_row_cells(row, settings["prompt_lengths"]))
    console.print(table)
    console.print(
        "peak RSS: the worker process's maximum resident memory, interpreter and libraries "
        f"included; decode: {settings['new_tokens']} new tokens after the "
        f"{settings['decode_prompt_length']}-token prompt"
    )
    for row in report["rows"]:
        if row.get("note"):
            console.print(f"note, {row['label']}: {row['note']}")
    for entry in report["skipped"]:
        console.print(f"[yellow]skipped {entry['label']}: {entry['reason']}[/yellow]")

    ratios = Table(title="targets")
    for column in ("ratio", "value", "target", "result"):
        ratios.add_column(column)
    for ratio in report["ratios"]:
        value, target, result = _ratio_cells(ratio)
        if result == "missed":
            result = "[red]missed[/red]"
        ratios.add_row(ratio["name"], value, target, result)
    console.print(ratios)


def _ratio_cells(ratio: dict[str, Any]) -> tuple[str, str, str]:
    value = "n/a" if ratio["value"] is None else f"{ratio['value']:.2f}x"
    if ratio["target"] is None:
        return value, "report only", "-"
    sign = ">=" if ratio["target_is_minimum"] else "<="
    result = {True: "met", False: "missed", None: "n/a"}[ratio["met"]]
    return value, f"{sign} {ratio['target']:g}x", result


def markdown_report(report: dict[str, Any]) -> str:
    """Render the rows, skipped rows and ratios of a report as Markdown tables."""
    settings = report["settings"]
    machine = report["machine"]
    lengths = settings["prompt_lengths"]
    lines = [
        f"Run {report['created']}, shadow-edge {report['shadow_edge']}, "
        f"{machine['cpu_model']} ({machine['logical_cpus']} logical CPUs), "
        f"{settings['threads']} threads. Each cell is the median (min-max) of "
        f"{settings['repeats']} timed runs after {settings['warmup_passes']} warm-up pass. "
        f"Decode: {settings['new_tokens']} new tokens after the "
        f"{settings['decode_prompt_length']}-token prompt.",
        "",
        "| configuration | load ms | "
        + " | ".join(f"first token ms @{n}" for n in lengths)
        + " | decode tok/s | peak RSS MiB | disk MiB |",
        "| --- | " + " | ".join("---:" for _ in range(len(lengths) + 4)) + " |",
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join(_row_cells(row, lengths)) + " |")
    for entry in report["skipped"]:
        lines.append("")
        lines.append(f"Skipped {entry['label']}: {entry['reason']}.")
    lines += ["", "| ratio | value | target | result |", "| --- | ---: | --- | --- |"]
    for ratio in report["ratios"]:
        lines.append("| " + " | ".join((ratio["name"], *_ratio_cells(ratio))) + " |")
    return "\n".join(lines) + "\n"
