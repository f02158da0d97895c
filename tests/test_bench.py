"""Tests for `shadow-edge bench` on tiny bundles: the report's structure and figures, the
chart, reference rows, worker failures and every kind of bad input.

Settings are tiny (prompts of 8 and 16 tokens, 8 new tokens, one repetition, one thread),
so the figures are checked for being real measurements, never against speed targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shadow_edge import bench, bundle
from shadow_edge.cli import main
from tiny_models import make_bpe_base, make_shadow_peft_adapter

TINY = ["--prompt-lengths", "16,8", "--new-tokens", "8", "--repeats", "1", "--threads", "1"]
PRODUCT_IDS = {
    "shadow-edge/combined/fp32/onnx",
    "shadow-edge/combined/int8/onnx",
    "shadow-edge/detached/fp32/onnx",
    "shadow-edge/detached/int8/onnx",
}
REFERENCE_IDS = {
    "shadow-peft/combined/fp32/torch",
    "shadow-peft/detached/fp32/torch",
    "transformers/base/fp32/torch",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The same small run for calls to bench.run_bench.
TINY_SETTINGS = bench.BenchSettings(prompt_lengths=(8,), new_tokens=4, repeats=1, threads=1)


def run_cli(*args: str) -> tuple[int, str]:
    """Run the CLI in this process; return the exit status and what it printed on stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def bench_run(tiny_bundle, tiny_llama, tmp_path_factory):
    """One bench run with comparison rows, through the CLI, with JSON and chart."""
    base, adapter = tiny_llama
    out = tmp_path_factory.mktemp("bench")
    code, printed = run_cli(
        "bench",
        str(tiny_bundle),
        *TINY,
        "--compare",
        "--base",
        str(base),
        "--adapter",
        str(adapter),
        "--references",
        "shadow-peft,transformers",
        "--json",
        str(out / "report.json"),
        "--chart",
        str(out / "chart.png"),
        "--markdown",
        str(out / "report.md"),
    )
    report = json.loads((out / "report.json").read_text())
    return code, printed, report, out


def rows_by_id(report) -> dict[str, dict]:
    return {row["id"]: row for row in report["rows"]}


# --- the report ----------------------------------------------------------------------------


def test_bench_exits_zero(bench_run):
    code, _, report, _ = bench_run
    assert code == 0
    assert report["schema"] == bench.SCHEMA


def test_bench_rows_cover_configurations(bench_run):
    _, _, report, _ = bench_run
    assert set(rows_by_id(report)) == PRODUCT_IDS | REFERENCE_IDS
    assert report["skipped"] == []


def test_bench_figures_are_measured(bench_run):
    _, _, report, _ = bench_run
    for row in report["rows"]:
        name = row["id"]
        assert row["first_load_s"] > 0, name
        assert row["load_s"]["median"] > 0, name
        assert len(row["load_s"]["values"]) == 1, name
        assert set(row["ttft_s"]) == {"8", "16"}, name
        for stats in row["ttft_s"].values():
            assert 0 < stats["min"] <= stats["median"] <= stats["max"], name
        assert row["decode_tps"]["median"] > 0, name
        assert row["decode_tokens"] == 8, name
        assert row["peak_rss_bytes"] > 0, name
        assert row["rss_before_load_bytes"] <= row["peak_rss_bytes"], name
        assert row["rss_after_load_bytes"] <= row["peak_rss_bytes"], name
        assert row["threads"] == 1, name


def test_bench_memory_is_per_process(bench_run):
    # A runtime worker imports no torch, so its peak stays below a torch worker's. Equal
    # figures would mean each worker reported the parent process's peak.
    _, _, report, _ = bench_run
    rows = rows_by_id(report)
    runtime_peak = rows["shadow-edge/detached/fp32/onnx"]["peak_rss_bytes"]
    torch_peak = rows["transformers/base/fp32/torch"]["peak_rss_bytes"]
    assert runtime_peak < torch_peak
    assert len({row["peak_rss_bytes"] for row in report["rows"]}) > 1


def test_bench_disk_sizes_match_files(bench_run, tiny_bundle):
    _, _, report, _ = bench_run
    for row in report["rows"]:
        assert row["files"], row["id"]
        for path, size in row["files"].items():
            assert os.path.getsize(path) == size, path
        assert row["disk_bytes"] == sum(row["files"].values())

    combined_int8 = rows_by_id(report)["shadow-edge/combined/int8/onnx"]
    expected = {
        bundle.MANIFEST,
        "tokenizer.json",
        "shadow.int8.onnx",
        "shadow.int8.onnx.data",
        "backbone.int8.onnx",
        "backbone.int8.onnx.data",
    }
    assert set(combined_int8["files"]) == {str(tiny_bundle.resolve() / n) for n in expected}
    detached_fp32 = rows_by_id(report)["shadow-edge/detached/fp32/onnx"]
    assert {Path(p).name for p in detached_fp32["files"]} == {
        bundle.MANIFEST,
        "tokenizer.json",
        "shadow.onnx",
        "shadow.onnx.data",
    }


def test_bench_rows_run_in_own_processes(bench_run):
    _, _, report, _ = bench_run
    pids = [row["pid"] for row in report["rows"]]
    assert len(set(pids)) == len(pids)
    assert os.getpid() not in pids


def test_bench_records_settings_and_machine(bench_run, tiny_bundle):
    _, _, report, _ = bench_run
    settings = report["settings"]
    assert settings["prompt_lengths"] == [8, 16]
    assert settings["decode_prompt_length"] == 8
    assert settings["new_tokens"] == 8
    assert settings["repeats"] == 1
    assert settings["threads"] == 1
    assert settings["warmup_passes"] >= 1
    assert report["machine"]["cpu_model"]
    assert report["machine"]["logical_cpus"] >= 1
    assert report["bundle"] == str(tiny_bundle.resolve())


def test_bench_prompts_are_plain_tokens(bench_run, tiny_bundle):
    _, _, report, _ = bench_run
    prompts = report["prompt_token_ids"]
    assert {n: len(ids) for n, ids in prompts.items()} == {"8": 8, "16": 16}
    assert prompts["16"][:8] == prompts["8"]
    manifest = bundle.read_manifest(tiny_bundle)
    tokens = manifest.special_tokens
    special = {tokens["unk_token_id"], tokens["bos_token_id"], *tokens["eos_token_ids"]}
    assert not special & set(prompts["16"])


def test_bench_ratios_from_same_run(bench_run):
    _, _, report, _ = bench_run
    rows = rows_by_id(report)
    ratios = {r["name"]: r for r in report["ratios"]}
    combined = rows["shadow-edge/combined/int8/onnx"]

    detached = ratios["detached int8 decode vs combined int8 decode"]
    expected = (
        rows["shadow-edge/detached/int8/onnx"]["decode_tps"]["median"]
        / (combined["decode_tps"]["median"])
    )
    assert detached["value"] == pytest.approx(expected)
    assert detached["met"] == (expected >= 3)

    vs_shadow_peft = ratios["combined int8 decode vs shadow-peft combined generate"]
    assert vs_shadow_peft["denominator"] == "shadow-peft/combined/fp32/torch"
    assert vs_shadow_peft["value"] == pytest.approx(
        combined["decode_tps"]["median"]
        / rows["shadow-peft/combined/fp32/torch"]["decode_tps"]["median"]
    )
    assert ratios["combined int8 decode vs transformers fp32 base generate"]["value"] > 0

    memory = ratios["combined int8 peak memory vs its files on disk"]
    assert memory["value"] == pytest.approx(combined["peak_rss_bytes"] / combined["disk_bytes"])
    assert memory["target_is_minimum"] is False

    # Rows this run did not measure give no figure.
    assert ratios["combined int8 decode vs peft cached generate"]["value"] is None
    assert ratios["combined int8 decode vs peft cached generate"]["met"] is None
    assert ratios["combined int8 decode vs llama.cpp base GGUF"]["value"] is None


def test_bench_prints_tables(bench_run):
    _, printed, _, _ = bench_run
    assert "shadow-edge bench" in printed
    assert "targets" in printed
    assert "n/a" in printed  # the peft and llama.cpp ratios


def test_bench_markdown_matches_report(bench_run):
    _, _, report, out = bench_run
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = next(line for line in table if line.startswith("| configuration |"))
    separator = text.splitlines()[text.splitlines().index(header) + 1]
    assert separator.count("|") == header.count("|")
    for row in report["rows"]:
        line = next(line for line in table if line.startswith(f"| {row['label']} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        # label, load, one column per prompt length, decode, peak RSS, disk
        assert len(cells) == 2 + len(report["settings"]["prompt_lengths"]) + 3
        decode = float(cells[-3].split(" ")[0])
        assert decode == pytest.approx(row["decode_tps"]["median"], rel=0.05, abs=0.01)
        assert float(cells[-1]) == pytest.approx(row["disk_bytes"] / 2**20, abs=0.05)
    for ratio in report["ratios"]:
        assert any(line.startswith(f"| {ratio['name']} |") for line in table)


def test_bench_chart_is_png(bench_run):
    _, _, _, out = bench_run
    data = (out / "chart.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000


def test_bench_imports_no_torch():
    code = (
        "import sys, shadow_edge.bench, shadow_edge.bench_cli, shadow_edge.bench_worker; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


# --- references that cannot run -----------------------------------------------------------


def test_plan_references_skips_with_reason(tiny_bundle, tiny_llama):
    base, adapter = tiny_llama
    manifest = bundle.read_manifest(tiny_bundle)
    compare = bench.CompareSpec(base=str(base), adapter=str(adapter))
    configs, skipped = bench.plan_references(tiny_bundle, manifest, compare, bench.BenchSettings())
    assert {c.id for c in configs} == REFERENCE_IDS
    reasons = {entry["id"]: entry["reason"] for entry in skipped}
    for mode in ("combined", "detached"):
        assert "shadow-peft's format" in reasons[f"peft/{mode}/fp32/torch"]
        assert "--peft-adapter" in reasons[f"peft/{mode}/fp32/torch"]
    assert reasons["llama.cpp/detached"] == "the bundle has no GGUF file"
    assert reasons["llama.cpp/base"] == "no --base-gguf given"


@pytest.mark.gguf
def test_failed_reference_is_skipped(tiny_bundle, tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp")
    base, adapter = tiny_llama
    gguf = pytest.importorskip("gguf")
    # A valid GGUF header with no tensors: readable, but llama.cpp cannot load a model.
    broken = tmp_path / "empty.gguf"
    writer = gguf.GGUFWriter(str(broken), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report = bench.run_bench(
        tiny_bundle,
        TINY_SETTINGS,
        modes=["detached"],
        precisions=["fp32"],
        compare=bench.CompareSpec(
            base=str(base),
            adapter=str(adapter),
            base_gguf=str(broken),
            references=("llama.cpp",),
        ),
    )
    assert [row["id"] for row in report["rows"]] == ["shadow-edge/detached/fp32/onnx"]
    failed = [entry for entry in report["skipped"] if entry["id"].startswith("llama.cpp/base")]
    assert len(failed) == 1
    assert failed[0]["reason"]


@pytest.fixture(scope="module")
def peft_timing_adapter(tiny_llama, tmp_path_factory) -> Path:
    from shadow_edge.models.peft_timing import obtain_peft_timing_adapter

    base, adapter = tiny_llama
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHADOW_EDGE_CACHE", str(cache))
        folder = obtain_peft_timing_adapter(base, adapter)
        # A second call finds the cached copy instead of building another.
        assert obtain_peft_timing_adapter(base, adapter) == folder
    assert folder.parent == cache / "adapters"
    return folder


def test_peft_timing_adapter_sizes(tiny_llama, peft_timing_adapter):
    from shadow_edge.checkpoint import Dialect, inspect_adapter

    _, adapter = tiny_llama
    source = inspect_adapter(adapter).settings
    info = inspect_adapter(peft_timing_adapter)
    assert info.dialect is Dialect.PEFT
    assert info.settings["r"] == source["injection_hidden_size"]
    assert info.settings["update_hidden_size"] == source["gate_hidden_size"]
    assert info.settings["shadow_num_hidden_layers"] == source["num_shadow_layers"]
    assert info.settings["shadow_intermediate_size"] == source["shadow_intermediate_size"]


def test_peft_rows_with_peft_adapter(tiny_bundle, tiny_llama, peft_timing_adapter):
    base, adapter = tiny_llama
    report = bench.run_bench(
        tiny_bundle,
        TINY_SETTINGS,
        modes=["detached"],
        precisions=["int8"],
        compare=bench.CompareSpec(
            base=str(base),
            adapter=str(adapter),
            peft_adapter=str(peft_timing_adapter),
            references=("peft",),
        ),
    )
    rows = rows_by_id(report)
    assert set(rows) == {
        "shadow-edge/detached/int8/onnx",
        "peft/combined/fp32/torch",
        "peft/detached/fp32/torch",
    }
    for ref_id in ("peft/combined/fp32/torch", "peft/detached/fp32/torch"):
        row = rows[ref_id]
        assert row["decode_tokens"] == 4
        assert row["decode_tps"]["median"] > 0
        assert str(peft_timing_adapter) in row["note"]
        assert any(path.startswith(str(peft_timing_adapter)) for path in row["files"])
    ratios = {r["name"]: r for r in report["ratios"]}
    unloaded = ratios["detached int8 decode vs peft unloaded shadow"]
    assert unloaded["value"] == pytest.approx(
        rows["shadow-edge/detached/int8/onnx"]["decode_tps"]["median"]
        / rows["peft/detached/fp32/torch"]["decode_tps"]["median"]
    )


def test_bench_rejects_wrong_peft_adapter(capsys, tiny_bundle, tiny_llama):
    _, adapter = tiny_llama
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--peft-adapter", str(adapter))
    assert f"--peft-adapter {adapter}: not a peft ShadowPEFT adapter" in err


def test_bench_peft_adapter_error_names_option(capsys, tiny_bundle, tiny_llama):
    base, _ = tiny_llama
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--peft-adapter", str(base))
    assert err.startswith(f"error: --peft-adapter {base}: ")
    assert "not a shadow adapter checkpoint" in err


def test_bench_demo_without_demo_says_run_demo(capsys, tmp_path, monkeypatch):
    from shadow_edge.models import bench_demo

    monkeypatch.setenv("SHADOW_EDGE_CACHE", str(tmp_path / "cache"))
    assert bench_demo.main(["--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Run `make demo` first" in err
    # It stops before obtaining the base model.
    assert not (tmp_path / "cache" / "models").exists()


def test_failed_configuration_raises(tiny_bundle, tmp_path):
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    with open(copy / "shadow.onnx", "ab") as f:
        f.write(b"changed")
    with pytest.raises(bench.BenchError, match=r"detached fp32 \(onnx\) failed: .*sha256"):
        bench.run_bench(
            copy,
            TINY_SETTINGS,
            modes=["detached"],
            precisions=["fp32"],
        )


# --- GGUF: the runtime's gguf backend and llama.cpp rows -----------------------------------


@pytest.fixture(scope="module")
def gguf_bundle(tmp_path_factory) -> tuple[Path, Path, Path]:
    from shadow_edge.export.exporter import export_bundle

    root = tmp_path_factory.mktemp("bench-gguf")
    base = make_bpe_base(root / "base", "llama")
    adapter = make_shadow_peft_adapter(root / "adapter", base, shadow_intermediate_size=32)
    out = export_bundle(base, adapter, root / "bundle", precisions=["fp32"], gguf_type="f32")
    return out, base, adapter


@pytest.mark.gguf
def test_bench_gguf_rows(gguf_bundle, tmp_path):
    pytest.importorskip("llama_cpp")
    folder, base, adapter = gguf_bundle
    # The bundle's own shadow.gguf serves as the base GGUF, because it is a stock llama.cpp
    # model with the same vocabulary.
    code, printed = run_cli(
        "bench",
        str(folder),
        *TINY,
        "--backends",
        "gguf",
        "--compare",
        "--base",
        str(base),
        "--adapter",
        str(adapter),
        "--references",
        "llama.cpp",
        "--base-gguf",
        str(folder / bundle.SHADOW_GGUF),
        "--json",
        str(tmp_path / "report.json"),
    )
    assert code == 0

    report = json.loads((tmp_path / "report.json").read_text())
    rows = rows_by_id(report)
    assert set(rows) == {
        "shadow-edge/detached/f32/gguf",
        "llama.cpp/detached/f32/gguf",
        "llama.cpp/base/f32/gguf",
    }
    for row in rows.values():
        assert row["decode_tokens"] == 8, row["id"]
        assert row["decode_tps"]["median"] > 0, row["id"]
        assert row["files"] and row["disk_bytes"] > 0, row["id"]

    gguf_size = (folder / bundle.SHADOW_GGUF).stat().st_size
    assert rows["llama.cpp/base/f32/gguf"]["disk_bytes"] == gguf_size
    assert "F32 x" in rows["llama.cpp/base/f32/gguf"]["note"]
    ratio = {r["name"]: r for r in report["ratios"]}["combined int8 decode vs llama.cpp base GGUF"]
    assert ratio["value"] is None  # this bundle has no int8 graphs
    assert "llama.cpp base GGUF (f32)" in printed


# --- bad input -----------------------------------------------------------------------------


def cli_error(capsys, *args: str) -> str:
    """Run the CLI expecting a user error; return its one-line message."""
    code, _ = run_cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_bench_rejects_missing_bundle(capsys, tmp_path):
    err = cli_error(capsys, "bench", str(tmp_path / "nowhere"))
    assert f"bundle folder {tmp_path / 'nowhere'} not found" in err


def test_bench_rejects_folder_without_manifest(capsys, tmp_path):
    err = cli_error(capsys, "bench", str(tmp_path))
    assert "not a shadow-edge bundle" in err


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--prompt-lengths", "0", "--prompt-lengths must be an integer >= 1, got 0"),
        ("--prompt-lengths", "8,abc", "--prompt-lengths must be an integer >= 1, got 'abc'"),
        ("--prompt-lengths", ",", "--prompt-lengths needs at least one integer"),
        ("--new-tokens", "1", "--new-tokens must be an integer >= 2, got 1"),
        ("--new-tokens", "-3", "--new-tokens must be an integer >= 2, got -3"),
        ("--repeats", "0", "--repeats must be an integer >= 1, got 0"),
        ("--threads", "two", "--threads must be an integer >= 1, got 'two'"),
        ("--modes", "both", "--modes: unknown value 'both'"),
        ("--backends", "cuda", "--backends: unknown value 'cuda'"),
    ],
)
def test_bench_rejects_invalid_values(capsys, tiny_bundle, option, value, message):
    err = cli_error(capsys, "bench", str(tiny_bundle), option, value)
    assert message in err


def test_bench_rejects_prompt_over_context(capsys, tiny_bundle):
    err = cli_error(capsys, "bench", str(tiny_bundle), "--prompt-lengths", "8,300")
    assert "prompt length 300 does not fit the context length 256" in err


def test_bench_rejects_decode_over_context(capsys, tiny_bundle):
    err = cli_error(
        capsys, "bench", str(tiny_bundle), "--prompt-lengths", "8", "--new-tokens", "250"
    )
    assert "8 prompt tokens + 250 new tokens" in err
    assert "context length 256" in err


def test_bench_rejects_absent_precision(capsys, tiny_bundle):
    err = cli_error(capsys, "bench", str(tiny_bundle), *TINY, "--precisions", "int4")
    assert "precision 'int4' not in this bundle (it has fp32, int8)" in err


def test_bench_rejects_gguf_without_file(capsys, tiny_bundle):
    err = cli_error(capsys, "bench", str(tiny_bundle), *TINY, "--backends", "gguf")
    assert "bundle has no shadow.gguf" in err


def test_bench_rejects_empty_selection(capsys, gguf_bundle):
    folder, _, _ = gguf_bundle
    err = cli_error(
        capsys, "bench", str(folder), *TINY, "--modes", "combined", "--backends", "gguf"
    )
    assert "no configuration matches modes combined with backends gguf" in err


def test_bench_compare_needs_base_and_adapter(capsys, tiny_bundle, tiny_llama):
    base, _ = tiny_llama
    err = cli_error(capsys, "bench", str(tiny_bundle), "--compare")
    assert "--compare needs --base and --adapter" in err
    err = cli_error(capsys, "bench", str(tiny_bundle), "--compare", "--base", str(base))
    assert "--compare needs --base and --adapter" in err


def test_bench_compare_options_need_compare(capsys, tiny_bundle, tiny_llama):
    base, _ = tiny_llama
    err = cli_error(capsys, "bench", str(tiny_bundle), "--base", str(base))
    assert "--base is used only with --compare" in err


def compare_args(tiny_bundle, tiny_llama) -> list[str]:
    base, adapter = tiny_llama
    return [
        "bench",
        str(tiny_bundle),
        *TINY,
        "--compare",
        "--base",
        str(base),
        "--adapter",
        str(adapter),
    ]


def test_bench_rejects_unknown_reference(capsys, tiny_bundle, tiny_llama):
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--references", "vllm")
    assert "--references: unknown value 'vllm'" in err


def test_bench_rejects_non_gguf_base_file(capsys, tiny_bundle, tiny_llama, tmp_path):
    fake = tmp_path / "base.gguf"
    fake.write_text("not a model")
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--base-gguf", str(fake))
    assert f"--base-gguf {fake}: not a GGUF file" in err
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + bytes(60))
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--base-gguf", str(truncated))
    assert f"{truncated}: cannot read the GGUF file" in err
    missing = tmp_path / "missing.gguf"
    err = cli_error(capsys, *compare_args(tiny_bundle, tiny_llama), "--base-gguf", str(missing))
    assert f"--base-gguf {missing}: file not found" in err


def test_bench_rejects_bad_adapter(capsys, tiny_bundle, tiny_llama, tmp_path):
    base, _ = tiny_llama
    err = cli_error(
        capsys,
        "bench",
        str(tiny_bundle),
        *TINY,
        "--compare",
        "--base",
        str(base),
        "--adapter",
        str(tmp_path),
    )
    assert "not a shadow adapter checkpoint" in err


def test_bench_rejects_missing_base(capsys, tiny_bundle, tiny_llama, tmp_path):
    _, adapter = tiny_llama
    missing = tmp_path / "no-base"
    err = cli_error(
        capsys,
        "bench",
        str(tiny_bundle),
        "--compare",
        "--base",
        str(missing),
        "--adapter",
        str(adapter),
    )
    assert f"--base {missing}: folder not found" in err


def test_bench_rejects_json_in_missing_folder(capsys, tiny_bundle, tmp_path):
    target = tmp_path / "no-folder" / "report.json"
    err = cli_error(capsys, "bench", str(tiny_bundle), "--json", str(target))
    assert f"folder {target.parent} not found" in err


def test_settings_reject_bool_and_float():
    with pytest.raises(bench.BenchError, match="new tokens must be an integer >= 2"):
        bench.BenchSettings(new_tokens=True)
    with pytest.raises(bench.BenchError, match="each prompt length must be an integer"):
        bench.BenchSettings(prompt_lengths=(8.5,))


def test_decode_prompt_prefers_128():
    from shadow_edge.bench import BenchSettings

    assert BenchSettings(prompt_lengths=(32, 128, 512)).decode_prompt_length == 128
    assert BenchSettings(prompt_lengths=(64, 16)).decode_prompt_length == 16
