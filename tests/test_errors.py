"""Bad input and faults: each kind gets a clear error, and nothing is lost.

| kind                          | where it is caught          | message names                     |
| ----------------------------- | --------------------------- | --------------------------------- |
| missing base/adapter/bundle   | load_model, read_manifest   | the path, "not found"             |
| file where a folder belongs   | inspect_adapter, bundle     | the path, "pass the ... folder"   |
| unreadable file               | checkpoint and bundle JSON  | the path, "cannot read"           |
| missing config or weights     | inspect_adapter             | the file names it looked for      |
| corrupt or truncated weights  | read_safetensors_header     | the file, byte counts             |
| keys that do not match config | check_against_base          | the tensor and config value       |
| adapter for another base      | check_against_base          | both values                       |
| unsafe pickle                 | load_model                  | "rejected", how to convert        |
| unsupported architecture      | check_architecture          | the supported list                |
| existing output               | check_output                | --force or another path           |
| foreign files with --force    | check_output                | the foreign files                 |
| interrupted export            | staging_folder              | (no folder, no temporary files)   |
| changed, missing, newer files | read_manifest               | file, sha256 / version, upgrade   |
| GGUF asked for but absent     | ShadowEdgeModel             | --gguf                            |
| generation input              | ShadowEdgeModel, Sampler    | the value and its valid range     |
| CLI user error                | cli.main                    | one line, exit 2, no traceback    |
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadow_edge import bundle
from shadow_edge.checkpoint import inspect_adapter
from shadow_edge.errors import (
    BundleError,
    CheckpointError,
    ChecksumError,
    GenerationError,
    ShadowEdgeError,
    UnsupportedModelError,
)
from shadow_edge.export.exporter import export_bundle
from shadow_edge.export.load import load_model
from shadow_edge.runtime import load
from tiny_models import make_base, make_shadow_peft_adapter


@pytest.fixture()
def adapter_copy(tiny_llama, tmp_path) -> Path:
    _, adapter = tiny_llama
    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


# Paths


def test_missing_base(tiny_llama, tmp_path):
    _, adapter = tiny_llama
    with pytest.raises(ShadowEdgeError, match="not found"):
        load_model(tmp_path / "nowhere", adapter)


def test_missing_adapter(tiny_llama, tmp_path):
    base, _ = tiny_llama
    with pytest.raises(CheckpointError, match=f"adapter folder {tmp_path / 'nowhere'} not found"):
        load_model(base, tmp_path / "nowhere")


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load(tmp_path / "nowhere")


def test_file_instead_of_folder(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file; pass the checkpoint folder"):
        inspect_adapter(file)
    with pytest.raises(BundleError, match="is a file; pass the bundle folder"):
        load(file)


def test_unreadable_config(adapter_copy, monkeypatch):
    original = Path.read_text

    def deny(self, *args, **kwargs):
        if self.name == "shadow_config.json":
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(CheckpointError, match="shadow_config.json: cannot read file"):
        inspect_adapter(adapter_copy)


# Checkpoints


def test_missing_config(adapter_copy):
    (adapter_copy / "shadow_config.json").unlink()
    with pytest.raises(CheckpointError, match="expected shadow_config.json .* or adapter_config"):
        inspect_adapter(adapter_copy)


def test_missing_weights(adapter_copy):
    (adapter_copy / "shadow_adapter.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shadow_adapter.safetensors, shadow_adapter.pt"):
        inspect_adapter(adapter_copy)


def test_corrupt_weights(adapter_copy):
    (adapter_copy / "shadow_adapter.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        inspect_adapter(adapter_copy)


def test_truncated_weights(adapter_copy):
    path = adapter_copy / "shadow_adapter.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        inspect_adapter(adapter_copy)


def test_config_disagrees_with_weights(tiny_llama, adapter_copy):
    base, _ = tiny_llama
    config = json.loads((adapter_copy / "shadow_config.json").read_text())
    config["injection_hidden_size"] = 4
    (adapter_copy / "shadow_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rank 8 but shadow_config.json says .*=4"):
        load_model(base, adapter_copy)


def test_missing_tensor_keys(tiny_llama, adapter_copy):
    base, _ = tiny_llama
    path = adapter_copy / "shadow_adapter.safetensors"
    state = load_file(str(path))
    del state["shadow_update_model.update_gates.2.0.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="update_gates.2.0.weight"):
        load_model(base, adapter_copy)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 64, "intermediate_size": 96}, "hidden size is 48 in the adapter but 64"),
        ({"num_hidden_layers": 6}, "decoder layer count is 4 in the adapter but 6"),
    ],
)
def test_adapter_for_other_base(tiny_llama, tmp_path, overrides, message):
    _, adapter = tiny_llama
    other = make_base(tmp_path / "other", "llama", **overrides)
    with pytest.raises(CheckpointError, match=message):
        load_model(other, adapter)


def test_adapter_for_other_vocab(tmp_path):
    base = make_base(tmp_path / "base", "qwen2", tie_word_embeddings=False)
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base, train_shadow_head=True)
    other = make_base(tmp_path / "other", "qwen2", vocab_size=128, tie_word_embeddings=False)
    with pytest.raises(CheckpointError, match="vocabulary size .* is 96 in the adapter but 128"):
        load_model(other, adapter)


def test_adapter_for_other_architecture(tmp_path):
    qwen3 = make_base(tmp_path / "qwen3", "qwen3", head_dim=12)
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", qwen3)
    llama = make_base(tmp_path / "llama", "llama")
    with pytest.raises(CheckpointError, match="architecture is qwen3 .* but llama"):
        load_model(llama, adapter)


# Pickles


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_refused(tiny_llama, adapter_copy, capfd):
    base, _ = tiny_llama
    (adapter_copy / "shadow_adapter.safetensors").unlink()
    torch.save({"weights": _Payload()}, adapter_copy / "shadow_adapter.pt")
    with pytest.raises(CheckpointError, match="rejected: the pickle contains more than"):
        load_model(base, adapter_copy)
    assert "this must never run" not in capfd.readouterr().out


def test_tensor_pickle_loads(tiny_llama, adapter_copy):
    base, adapter = tiny_llama
    path = adapter_copy / "shadow_adapter.safetensors"
    torch.save(load_file(str(path)), adapter_copy / "shadow_adapter.pt")
    path.unlink()
    spec = load_model(base, adapter_copy)
    expected = load_model(base, adapter)
    ids = torch.tensor([[3, 4, 5, 6]])
    torch.testing.assert_close(
        spec.reference_logits(ids, False), expected.reference_logits(ids, False)
    )


# Architecture


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=96)).save_pretrained(
        tmp_path / "gpt2"
    )
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported; supported: llama"):
        from shadow_edge.export.load import load_base_model

        load_base_model(tmp_path / "gpt2")


# Output folders


def test_existing_output_needs_force(tiny_llama, bundle_copy):
    base, adapter = tiny_llama
    with pytest.raises(ShadowEdgeError, match="already exists; pass --force"):
        export_bundle(base, adapter, bundle_copy)


def test_force_keeps_foreign_files(tiny_llama, bundle_copy):
    base, adapter = tiny_llama
    (bundle_copy / "notes.txt").write_text("mine")
    with pytest.raises(ShadowEdgeError, match=r"not part of a bundle \(notes.txt\)"):
        export_bundle(base, adapter, bundle_copy, force=True)
    assert (bundle_copy / "notes.txt").read_text() == "mine"


def test_force_replaces_bundle(tiny_llama, bundle_copy):
    base, adapter = tiny_llama
    export_bundle(base, adapter, bundle_copy, force=True)
    manifest = bundle.read_manifest(bundle_copy)
    assert manifest.precisions == ["fp32"]
    assert not (bundle_copy / "shadow.int8.onnx").exists()
    assert [p.name for p in bundle_copy.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_interrupted_export_leaves_nothing(tiny_llama, tmp_path, monkeypatch, fault):
    from shadow_edge.export import onnx_export

    base, adapter = tiny_llama

    def fail(*args, **kwargs):
        raise fault

    monkeypatch.setattr(onnx_export, "export_backbone_graph", fail)
    out = tmp_path / "out" / "bundle"
    out.parent.mkdir()
    with pytest.raises(type(fault) if isinstance(fault, Exception) else fault):
        export_bundle(base, adapter, out)
    assert list(out.parent.iterdir()) == []


# Bundles


def test_changed_file_detected(bundle_copy):
    path = bundle_copy / "tokenizer.json"
    path.write_text(path.read_text().replace("kitchen", "kitchens"))
    with pytest.raises(ChecksumError, match="tokenizer.json: sha256 differs"):
        load(bundle_copy)


def test_missing_graph_detected(bundle_copy):
    (bundle_copy / "backbone.onnx").unlink()
    with pytest.raises(BundleError, match="backbone.onnx is listed in manifest.json but missing"):
        load(bundle_copy)


def test_newer_format_rejected(bundle_copy):
    path = bundle_copy / bundle.MANIFEST
    data = json.loads(path.read_text())
    data["format_version"] = bundle.FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="newer than this shadow-edge supports"):
        load(bundle_copy)


def test_missing_manifest_is_not_a_bundle(bundle_copy):
    (bundle_copy / bundle.MANIFEST).unlink()
    with pytest.raises(BundleError, match="no manifest.json; this is not a shadow-edge bundle"):
        load(bundle_copy)


def test_gguf_absent(tiny_bundle):
    with pytest.raises(BundleError, match="has no shadow.gguf; export it with --gguf"):
        load(tiny_bundle, mode="detached", backend="gguf")


def test_gguf_combined_rejected(tiny_bundle):
    with pytest.raises(BundleError, match="runs the detached shadow only"):
        load(tiny_bundle, mode="combined", backend="gguf")


def test_unknown_precision(tiny_bundle):
    with pytest.raises(BundleError, match="precision 'int4' not in this bundle"):
        load(tiny_bundle, precision="int4")


# Generation


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load(tiny_bundle)


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(model, prompt):
    with pytest.raises(GenerationError, match="prompt is empty"):
        model.generate(prompt)


def test_invalid_utf8(model):
    with pytest.raises(GenerationError, match="not valid UTF-8"):
        model.generate(b"turn on \xff\xfe")
    with pytest.raises(GenerationError, match="not valid UTF-8"):
        model.generate("lone surrogate \udc80")


# CLI


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "shadow_edge.cli", *args], capture_output=True, text=True
    )


def test_cli_user_error_is_one_line(tmp_path):
    done = _cli("run", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: bundle folder {tmp_path / 'nowhere'} not found"
    ]
    assert "Traceback" not in done.stderr


def test_cli_debug_shows_traceback(tmp_path):
    done = _cli("--debug", "run", str(tmp_path / "nowhere"), "--prompt", "hi")
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_cli_invalid_value(tiny_bundle):
    done = _cli("run", str(tiny_bundle), "--prompt", "hi", "--top-p", "2")
    assert done.returncode == 2
    assert "top_p must be in (0, 1], got 2.0" in done.stderr


@pytest.mark.parametrize(
    "flags, option",
    [
        (["--int4-scheme", "symmetric"], "--int4-scheme"),
        (["--int8", "--int4-block-size", "16"], "--int4-block-size"),
    ],
)
def test_cli_int4_options_need_int4(tmp_path, flags, option):
    out = tmp_path / "bundle"
    done = _cli(
        "export", "--base", str(tmp_path), "--adapter", str(tmp_path), "-o", str(out), *flags
    )
    assert done.returncode == 2
    assert f"error: {option} applies to int4 graphs only. Add --int4 or drop it." in done.stderr
    assert not out.exists()


def test_no_bare_except_pass():
    root = Path(__file__).parents[1]
    offenders = []
    for path in root.glob("*/**/*.py"):
        if ".venv" in path.parts:
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            if line.strip().startswith("except") and lines[i + 1].strip() == "pass":
                offenders.append(f"{path.relative_to(root)}:{i + 1}")
    assert offenders == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gguf_type": "bogus"}, "unknown GGUF type 'bogus'; choose from f32, f16"),
        ({"precisions": ["int4"], "int4_block_size": 7}, "must be a power of two >= 16, got 7"),
        (
            {"precisions": ["int4"], "int4_scheme": "q4_1"},
            "unknown --int4-scheme 'q4_1'; choose from affine, symmetric",
        ),
    ],
)
def test_export_options_checked_first(tiny_llama, tmp_path, monkeypatch, kwargs, message):
    from shadow_edge.export import load

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(load, "load_model", never)
    base, adapter = tiny_llama
    with pytest.raises(ShadowEdgeError, match=message):
        export_bundle(base, adapter, tmp_path / "bundle", **kwargs)
    assert not (tmp_path / "bundle").exists()


def test_infinite_temperature(model):
    with pytest.raises(GenerationError, match="temperature must be a finite number >= 0, got inf"):
        model.generate("turn on the light", temperature=float("inf"))


def test_cli_verify_rejects_zero_prompts(tiny_bundle, tiny_llama):
    base, adapter = tiny_llama
    done = _cli(
        "verify", str(tiny_bundle), "--base", str(base), "--adapter", str(adapter), "--prompts", "0"
    )
    assert done.returncode == 2
    assert "--prompts must be >= 1, got 0" in done.stderr


def test_cli_verify_context_too_short(tiny_llama, tmp_path):
    base, adapter = tiny_llama
    out = export_bundle(base, adapter, tmp_path / "bundle", context=32)
    done = _cli("verify", str(out), "--base", str(base), "--adapter", str(adapter))
    assert done.returncode == 2
    assert "the bundle's context length is 32 tokens" in done.stderr
    assert "Export with --context-length" in done.stderr
    assert "--truncate" not in done.stderr


def test_cli_verify_context_checked_before_model_load(tiny_llama, tmp_path):
    base, adapter = tiny_llama
    out = export_bundle(base, adapter, tmp_path / "bundle", context=32)
    done = _cli("verify", str(out), "--base", str(tmp_path / "no-base"), "--adapter", str(adapter))
    assert done.returncode == 2
    assert "the bundle's context length is 32 tokens" in done.stderr


def test_verify_context_suggestion_is_enough(tiny_llama, tmp_path):
    from shadow_edge.export.verify import check_context

    base, adapter = tiny_llama
    short = export_bundle(base, adapter, tmp_path / "short", context=32)
    with pytest.raises(ShadowEdgeError, match="--context-length") as caught:
        check_context(short, num_prompts=16)
    needed = int(str(caught.value).split("--context-length ")[1].split()[0])
    enough = export_bundle(base, adapter, tmp_path / "enough", context=needed)
    check_context(enough, num_prompts=16)
    too_short = export_bundle(base, adapter, tmp_path / "too-short", context=needed - 1)
    with pytest.raises(ShadowEdgeError, match=f"need up to {needed}"):
        check_context(too_short, num_prompts=16)


def test_cli_debug_after_command(tmp_path):
    done = _cli("run", str(tmp_path / "nowhere"), "--prompt", "hi", "--debug")
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_cli_verify_checks_bundle_first(tmp_path):
    # A missing base would fail too, so the bundle error proves the bundle came first.
    done = _cli(
        "verify", str(tmp_path / "nowhere"), "--base", str(tmp_path / "no-base"), "--adapter", "x"
    )
    assert done.returncode == 2
    assert f"bundle folder {tmp_path / 'nowhere'} not found" in done.stderr


def test_cli_verify_hides_transformers_noise(tiny_bundle, tiny_llama):
    base, adapter = tiny_llama
    args = ["verify", str(tiny_bundle), "--base", str(base), "--adapter", str(adapter)]
    done = _cli(*args, "--prompts", "2", "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr
    assert "FutureWarning" not in done.stderr
    assert "deprecated" not in done.stderr
