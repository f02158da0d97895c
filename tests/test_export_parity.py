"""Exported graphs against shadow-peft's own forward on tiny random models."""

from __future__ import annotations

import json

import onnx
import pytest

from parity import check_bundle_parity
from shadow_edge import bundle
from shadow_edge.export.exporter import export_bundle
from shadow_edge.export.load import load_model
from tiny_models import make_base, make_shadow_peft_adapter

PROMPTS = ["turn on the light in the kitchen", [{"role": "user", "content": "hello"}]]
ARCHES = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.mark.parametrize("arch", ARCHES)
def test_implicit_shadow_parity(arch, tmp_path):
    base = make_base(tmp_path / "base", arch)
    adapter = make_shadow_peft_adapter(
        tmp_path / "adapter", base, num_shadow_layers=2, shadow_intermediate_size=32
    )
    out = export_bundle(base, adapter, tmp_path / "bundle")
    check_bundle_parity(out, load_model(base, adapter), PROMPTS)


def test_reduced_heads_shadow_parity(tmp_path):
    base = make_base(tmp_path / "base", "qwen3")
    adapter = make_shadow_peft_adapter(
        tmp_path / "adapter",
        base,
        shadow_num_attention_heads=2,
        shadow_num_key_value_heads=1,
        shadow_head_dim=8,
    )
    out = export_bundle(base, adapter, tmp_path / "bundle")
    manifest = bundle.read_manifest(out)
    assert manifest.shadow.cache.num_kv_heads == 1
    assert manifest.shadow.cache.head_dim == 8
    check_bundle_parity(out, load_model(base, adapter), PROMPTS)


def test_projected_explicit_shadow_parity(tmp_path):
    base = make_base(tmp_path / "base", "llama")
    shadow = make_base(
        tmp_path / "shadow",
        "llama",
        seed=3,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
    )
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base, shadow_model_dir=shadow)
    spec = load_model(base, adapter, shadow_model=shadow)
    assert spec.projection is not None
    out = export_bundle(base, adapter, tmp_path / "bundle", shadow_model=shadow)
    check_bundle_parity(out, spec, PROMPTS)


def test_trained_shadow_head_parity(tmp_path):
    base = make_base(tmp_path / "base", "qwen2", tie_word_embeddings=False)
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base, train_shadow_head=True)
    spec = load_model(base, adapter)
    assert spec.trained_shadow_head
    out = export_bundle(base, adapter, tmp_path / "bundle")
    check_bundle_parity(out, spec, PROMPTS)


def test_graph_io_names(tiny_bundle):
    manifest = bundle.read_manifest(tiny_bundle)
    shadow = onnx.load(str(tiny_bundle / manifest.shadow.files["fp32"]), load_external_data=False)
    backbone = onnx.load(
        str(tiny_bundle / manifest.backbone.files["fp32"]), load_external_data=False
    )
    assert [i.name for i in shadow.graph.input] == manifest.shadow.inputs
    assert [o.name for o in shadow.graph.output] == manifest.shadow.outputs
    assert [i.name for i in backbone.graph.input] == manifest.backbone.inputs
    assert [o.name for o in backbone.graph.output] == manifest.backbone.outputs
    assert "past_key_values.0.key" in manifest.backbone.inputs
    assert "present.3.value" in manifest.backbone.outputs
    assert manifest.backbone.inputs[1] == bundle.SHADOW_HIDDEN


def test_manifest_contents(tiny_bundle, tiny_llama):
    data = json.loads((tiny_bundle / bundle.MANIFEST).read_text())
    assert data["format_version"] == bundle.FORMAT_VERSION
    assert data["architecture"] == "llama"
    assert data["hidden_size"] == 48
    assert data["vocab_size"] == 96
    assert data["context_length"] == 256
    assert data["precisions"] == ["fp32", "int8"]
    assert data["special_tokens"]["eos_token_ids"] == [2]
    assert data["chat_template"].startswith("{% for message in messages %}")
    assert data["source"]["dialect"] == "shadow-peft"
    assert data["source"]["adapted_layers"] == [1, 2, 3]
    for name in ("shadow.onnx", "backbone.onnx", "shadow.int8.onnx", "tokenizer.json"):
        assert name in data["files"]
        assert len(data["files"][name]) == 64


def test_weights_are_external_data(tiny_bundle):
    import onnx

    manifest = bundle.read_manifest(tiny_bundle)
    for precision in ("fp32", "int8"):
        for graph in ("shadow", "backbone"):
            name = getattr(manifest, graph).files[precision]
            data = bundle.external_data_name(name)
            assert data in manifest.files
            assert manifest.graph_files(precision, (graph,)) == [name, data]
            model = onnx.load(str(tiny_bundle / name), load_external_data=False)
            inline = [t.name for t in model.graph.initializer if len(t.raw_data) > 1024]
            assert not inline, (name, inline)
            assert (tiny_bundle / data).stat().st_size > 0
            assert (tiny_bundle / data).stat().st_mode == (tiny_bundle / name).stat().st_mode


def test_context_length_option(tiny_llama, tmp_path):
    base, adapter = tiny_llama
    out = export_bundle(base, adapter, tmp_path / "bundle", context=64)
    assert bundle.read_manifest(out).context_length == 64


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_peft_dialect_bundle_parity(arch, tmp_path):
    from tiny_models import make_peft_adapter

    base = make_base(tmp_path / "base", arch)
    adapter = make_peft_adapter(tmp_path / "adapter", base)
    spec = load_model(base, adapter)
    assert spec.dialect == "peft"
    out = export_bundle(base, adapter, tmp_path / "bundle")
    assert bundle.read_manifest(out).source["dialect"] == "peft"
    check_bundle_parity(out, load_model(base, adapter), PROMPTS)
