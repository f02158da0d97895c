"""Terminal tables for the CLI's reports."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def print_verify_table(report, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="verify: bundle vs reference forward")
    for column in ("precision", "mode", "rel. logit err", "greedy match", "top-1", "exact match"):
        table.add_column(column)
    table.add_column("result")
    failures = []
    for m in report.modes:
        ties = f" ({len(m.ties)} ties)" if m.ties else ""
        table.add_row(
            m.precision,
            m.mode,
            f"{m.relative_logit_diff:.1e}",
            f"{m.greedy_matches}/{m.prompts}{ties}",
            f"{m.teacher_forced_top1:.1%}",
            "-" if m.exact_match is None else f"{m.exact_match:.1%}",
            "pass" if m.passed else "FAIL",
        )
        failures += [f"{m.precision} {m.mode}: {f}" for f in m.failures]
    console.print(table)
    console.print(
        "rel. logit err: max |bundle - reference| / max |reference| over prompt and answer; "
        "top-1: teacher-forced agreement on held-out answers"
    )
    for line in failures:
        console.print(f"[red]{line}[/red]")
    sizes = Table(title="files")
    sizes.add_column("file")
    sizes.add_column("size", justify="right")
    for name, size in sorted(report.file_sizes.items()):
        sizes.add_row(name, _mib(size))
    console.print(sizes)
    if report.gguf:
        g = report.gguf
        if "skipped" in g:
            console.print(f"gguf: skipped ({g['skipped']})")
        else:
            console.print(
                f"gguf {g['type']} ({_mib(g['size'])}) vs {g['compared_with']}: greedy match "
                f"{g['greedy_match']:.0%}, first 32 tokens {g['first32_match']:.0%} over "
                f"{g['prompts']} prompts: {'pass' if g['passed'] else 'FAIL'}"
            )
