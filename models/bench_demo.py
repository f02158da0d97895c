"""`make bench`: `shadow-edge bench` on the demo bundle, with every reference row.

It finds what `make demo` cached (SmolLM2-135M-Instruct, the demo adapter, the demo bundle),
builds the peft adapter of the same size for the peft rows, and runs

    shadow-edge bench BUNDLE --compare --base ... --adapter ... --peft-adapter ...
        --base-gguf ... --json benchmarks/smollm2-demo.json --chart benchmarks/smollm2-demo.png
        --markdown benchmarks/smollm2-demo.md

Options after `--` go to `shadow-edge bench` as they are (for example `-- --repeats 5`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shadow_edge.errors import ShadowEdgeError
from shadow_edge.paths import cache_dir

logger = logging.getLogger(__name__)

OUTPUT = Path("benchmarks")


def bench_arguments(output: Path, extra: list[str]) -> list[str]:
    from shadow_edge.models.peft_timing import obtain_peft_timing_adapter
    from shadow_edge.models.smollm2 import fetch_gguf, obtain_smollm2
    from shadow_edge.models.train import TrainSettings, demo_adapter_dir, demo_bundle_dir

    # The cache keys below hash the base model. Without any demo bundle the user needs
    # `make demo`, not a model download, so check for one first.
    if not any((cache_dir() / "bundles").glob("demo-*/manifest.json")):
        raise ShadowEdgeError(
            f"no demo bundle under {cache_dir() / 'bundles'}. The benchmark runs on the demo's "
            "adapter and bundle. Run `make demo` first."
        )
    base_dir = obtain_smollm2()
    settings = TrainSettings()
    adapter_dir = demo_adapter_dir(base_dir, settings)
    bundle_dir = demo_bundle_dir(adapter_dir)
    for needed in (adapter_dir / "shadow_config.json", bundle_dir / "manifest.json"):
        if not needed.is_file():
            raise ShadowEdgeError(
                f"{needed} not found. The benchmark runs on the demo's adapter and bundle. "
                "Run `make demo` first."
            )
    peft_adapter = obtain_peft_timing_adapter(base_dir, adapter_dir)
    return [
        "bench",
        str(bundle_dir),
        "--threads",
        "2",
        "--compare",
        "--base",
        str(base_dir),
        "--adapter",
        str(adapter_dir),
        "--peft-adapter",
        str(peft_adapter),
        "--base-gguf",
        str(fetch_gguf()),
        "--json",
        str(output / "smollm2-demo.json"),
        "--chart",
        str(output / "smollm2-demo.png"),
        "--markdown",
        str(output / "smollm2-demo.md"),
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="folder for the JSON, PNG and Markdown files"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from shadow_edge.cli import main as cli_main

    try:
        arguments = bench_arguments(args.output, extra)
    except ShadowEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("shadow-edge %s", " ".join(arguments))
    return cli_main(arguments)


if __name__ == "__main__":
    raise SystemExit(main())
