"""Tests for the GGUF writer: tensors, metadata, tokenizer, and llama.cpp against torch.

Every case is a tiny random base with a byte-level BPE tokenizer and a shadow-peft adapter.
Logits from llama-cpp-python on the written file are compared with the reference library's
detached path (`shadow_only` mode).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn as nn

from shadow_edge.errors import ShadowEdgeError, UnsupportedModelError
from shadow_edge.export.gguf import (
    SUPPORTED_GGUF_TYPES,
    interleave_rope_rows,
    pre_tokenizer_name,
    read_gguf_summary,
    write_shadow_gguf,
)
from shadow_edge.export.graphs import ShadowGraph
from shadow_edge.export.load import load_model
from tiny_models import (
    CHAT_TEMPLATE,
    make_bpe_base,
    make_peft_adapter,
    make_shadow_peft_adapter,
    save_bpe_tokenizer,
    save_tokenizer,
)

TOKENS = [5, 40, 77, 120, 200, 33, 9, 250, 17, 64, 101, 3, 150, 299]
SMALL = dict(hidden_size=64, intermediate_size=128)

# name -> (architecture, tokenizer style, base overrides, adapter settings, extra options)
CASES = {
    "llama": ("llama", "gpt2", {}, {"shadow_intermediate_size": 64}, {}),
    "llama_bias": ("llama", "gpt2", {"attention_bias": True, "mlp_bias": True}, {}, {}),
    "mistral": ("mistral", "llama3", {}, {}, {}),
    "qwen2": ("qwen2", "qwen2", {}, {}, {}),
    "qwen3": ("qwen3", "qwen2", {"head_dim": 32}, {"shadow_intermediate_size": 64}, {}),
    "llama3_rope": (
        "llama",
        "gpt2",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
        {},
        {},
    ),
    "linear_rope": (
        "qwen3",
        "qwen2",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e6, "factor": 4.0}},
        {},
        {},
    ),
    "projection": ("llama", "gpt2", {}, {}, {"shadow_hidden": 32}),
    "trained_head": ("llama", "gpt2", {}, {}, {"train_shadow_head": True}),
    "k_quant": (
        "llama",
        "gpt2",
        {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4},
        {"shadow_intermediate_size": 256},
        {},
    ),
}


@dataclasses.dataclass
class Case:
    name: str
    base_dir: Path
    spec: object
    folder: Path


def sharpen_(spec) -> None:
    """Make attention depend strongly on rotary positions and give every bias a value.

    Random init leaves attention nearly uniform and biases at zero, where a wrong Q/K row
    order or a dropped bias barely moves the logits. The layers are shared with the
    reference model, so both sides see the change.
    """
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in spec.shadow_layers:
            attn = layer.self_attn
            attn.q_proj.weight.mul_(10)
            attn.k_proj.weight.mul_(10)
            if hasattr(attn, "q_norm"):
                attn.q_norm.weight.mul_(4)
                attn.k_norm.weight.mul_(4)
            for name, param in layer.named_parameters():
                if name.endswith("bias"):
                    param.add_(torch.randn(param.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    built: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in built:
            arch, style, base_overrides, adapter_settings, extra = CASES[name]
            folder = tmp_path_factory.mktemp(name)
            sizes = {**SMALL, **base_overrides}
            base_dir = make_bpe_base(folder / "base", arch, style=style, **sizes)
            shadow_dir = None
            if "shadow_hidden" in extra:
                shadow_dir = make_bpe_base(
                    folder / "shadow",
                    arch,
                    seed=1,
                    style=style,
                    hidden_size=extra["shadow_hidden"],
                    intermediate_size=64,
                    num_hidden_layers=2,
                )
            make_shadow_peft_adapter(
                folder / "adapter",
                base_dir,
                shadow_model_dir=shadow_dir,
                train_shadow_head=extra.get("train_shadow_head", False),
                **adapter_settings,
            )
            spec = load_model(base_dir, folder / "adapter", shadow_model=shadow_dir)
            sharpen_(spec)
            built[name] = Case(name, base_dir, spec, folder)
        return built[name]

    return get


@pytest.fixture(scope="module")
def written(cases):
    """Write each (case, gguf_type) once per module."""
    files: dict[tuple[str, str], Path] = {}

    def get(name: str, gguf_type: str) -> Path:
        if (name, gguf_type) not in files:
            case = cases(name)
            out = case.folder / f"shadow-{gguf_type}.gguf"
            files[(name, gguf_type)] = write_shadow_gguf(case.spec, case.base_dir, out, gguf_type)
        return files[(name, gguf_type)]

    return get


def torch_logits(spec, tokens) -> np.ndarray:
    reference = spec.reference
    reference.set_inference_mode("shadow_only")
    with torch.no_grad():
        output = reference(input_ids=torch.tensor([tokens]))
    return output.logits[0].float().numpy()


def llama_cpp_logits(path: Path, tokens) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    # An F32 key/value cache keeps f32 files at float32 precision. llama.cpp's default F16
    # cache alone adds about 1e-3 relative error on these sharpened layers.
    f32 = int(gguf.GGMLQuantizationType.F32)
    model = llama_cpp.Llama(
        model_path=str(path), logits_all=True, verbose=False, n_ctx=64, type_k=f32, type_v=f32
    )
    try:
        model.eval(tokens)
        return np.array(model.scores[: len(tokens)], dtype=np.float32)
    finally:
        model.close()


def reader_value(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def decisive_positions(logits: np.ndarray, margin: float) -> np.ndarray:
    """Positions whose top-1 logit leads the runner-up by more than `margin`."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin


# --- parity with torch --------------------------------------------------------------------

# (case, gguf_type, max |diff| allowed as a share of max |logit|)
PARITY = [
    ("llama", "f32", 1e-5),
    ("llama", "f16", 1e-2),
    ("llama_bias", "f32", 1e-5),
    ("mistral", "f32", 1e-5),
    ("qwen2", "f32", 1e-5),
    ("qwen2", "f16", 1e-2),
    ("qwen3", "f32", 1e-5),
    ("qwen3", "f16", 1e-2),
    ("llama3_rope", "f32", 1e-5),
    ("linear_rope", "f32", 1e-5),
    ("projection", "f32", 1e-5),
    ("projection", "f16", 1e-2),
    ("trained_head", "f32", 1e-5),
    ("trained_head", "f16", 1e-2),
]


@pytest.mark.parametrize("name,gguf_type,tolerance", PARITY)
def test_logits_match_torch(cases, written, name, gguf_type, tolerance):
    pytest.importorskip("llama_cpp")
    expected = torch_logits(cases(name).spec, TOKENS)
    actual = llama_cpp_logits(written(name, gguf_type), TOKENS)

    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= tolerance * scale, f"max diff {diff:.3g}, max logit {scale:.3g}"
    assert actual.argmax(-1).tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize("name", ["llama", "qwen3", "projection"])
def test_q8_0_close_to_torch(cases, written, name):
    pytest.importorskip("llama_cpp")
    path = written(name, "q8_0")
    expected = torch_logits(cases(name).spec, TOKENS)
    actual = llama_cpp_logits(path, TOKENS)

    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= 0.05 * scale, f"max diff {diff:.3g}, max logit {scale:.3g}"
    decisive = decisive_positions(expected, 2 * diff)
    assert decisive.sum() >= len(TOKENS) // 2
    assert (actual.argmax(-1) == expected.argmax(-1))[decisive].all()
    assert read_gguf_summary(path)["tensor_types"].get("Q8_0", 0) > 0


def test_q4_k_m_through_llama_cpp(cases, written):
    pytest.importorskip("llama_cpp")
    path = written("k_quant", "q4_k_m")
    summary = read_gguf_summary(path)
    expected = torch_logits(cases("k_quant").spec, TOKENS)
    actual = llama_cpp_logits(path, TOKENS)

    assert summary["file_type_name"] == "MOSTLY_Q4_K_M"
    assert summary["tensor_types"].get("Q4_K", 0) > 0
    assert not list(path.parent.glob("*.tmp"))
    assert not list(path.parent.glob("*.partial"))
    cosine = (actual * expected).sum(-1) / (
        np.linalg.norm(actual, axis=-1) * np.linalg.norm(expected, axis=-1)
    )
    assert cosine.min() > 0.95, f"per-position cosine {cosine.round(3).tolist()}"


def shadow_graph_logits(spec, tokens) -> np.ndarray:
    """Run the exporter's detached graph (used where the reference has no shadow-only mode)."""
    graph = ShadowGraph(spec).eval()
    attn = spec.shadow_layers[0].self_attn
    n_kv_heads = attn.k_proj.weight.shape[0] // attn.head_dim
    empty = torch.zeros(1, n_kv_heads, 0, attn.head_dim)
    length = len(tokens)
    with torch.no_grad():
        outputs = graph(
            torch.tensor([tokens]),
            torch.ones(1, length, dtype=torch.long),
            torch.arange(length)[None],
            torch.arange(length),
            *([empty] * (2 * spec.num_shadow_layers)),
        )
    return outputs[1][0].numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_peft_dialect_logits_match(tmp_path, arch):
    pytest.importorskip("llama_cpp")
    base_dir = make_bpe_base(tmp_path / "base", arch, **SMALL)
    make_peft_adapter(tmp_path / "adapter", base_dir)
    spec = load_model(base_dir, tmp_path / "adapter")
    sharpen_(spec)
    path = write_shadow_gguf(spec, base_dir, tmp_path / "shadow.gguf", "f32")
    expected = shadow_graph_logits(spec, TOKENS)
    actual = llama_cpp_logits(path, TOKENS)

    assert spec.dialect == "peft"
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
    assert actual.argmax(-1).tolist() == expected.argmax(-1).tolist()


def test_unpermuted_llama_logits_differ(cases, written, tmp_path, monkeypatch):
    """Without the Q/K row reorder a llama file gives other logits (the reorder matters)."""
    pytest.importorskip("llama_cpp")
    import shadow_edge.export.gguf as gguf_module

    case = cases("llama")
    monkeypatch.setattr(gguf_module, "interleave_rope_rows", lambda weight, n_heads: weight)
    path = write_shadow_gguf(case.spec, case.base_dir, tmp_path / "unpermuted.gguf", "f32")
    expected = torch_logits(case.spec, TOKENS)
    actual = llama_cpp_logits(path, TOKENS)

    assert np.abs(actual - expected).max() > 0.05 * np.abs(expected).max()


# --- tensors and metadata -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_metadata_f16(cases, written, name):
    case = cases(name)
    spec = case.spec
    reader = gguf.GGUFReader(written(name, "f16"))
    arch = reader_value(reader, "general.architecture")
    shadow = spec.shadow_layers[0].self_attn
    head_dim = shadow.head_dim

    assert arch == ("qwen3" if name == "qwen3" else "llama")
    assert reader_value(reader, f"{arch}.block_count") == spec.num_shadow_layers
    assert reader_value(reader, f"{arch}.embedding_length") == 64
    assert reader_value(reader, f"{arch}.feed_forward_length") == 64
    assert reader_value(reader, f"{arch}.context_length") == 256
    assert reader_value(reader, f"{arch}.attention.head_count") == 4
    assert reader_value(reader, f"{arch}.attention.head_count_kv") == 2
    assert reader_value(reader, f"{arch}.rope.dimension_count") == head_dim
    assert reader_value(reader, f"{arch}.rope.freq_base") == pytest.approx(
        spec.shadow_config.rope_parameters["rope_theta"]
    )
    assert reader_value(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert reader_value(reader, f"{arch}.vocab_size") == 320
    key_length = reader_value(reader, f"{arch}.attention.key_length")
    assert key_length == (32 if name == "qwen3" else None)
    assert reader_value(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_F16)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_tokenizer_metadata(cases, written, name):
    case = cases(name)
    reader = gguf.GGUFReader(written(name, "f16"))
    tokenizer_json = json.loads((case.base_dir / "tokenizer.json").read_text())
    tokens = reader_value(reader, "tokenizer.ggml.tokens")
    types = reader_value(reader, "tokenizer.ggml.token_type")

    assert reader_value(reader, "tokenizer.ggml.model") == "gpt2"
    assert reader_value(reader, "tokenizer.ggml.pre") == ("qwen2" if name == "qwen3" else "gpt-2")
    assert len(tokens) == 320
    assert tokens[:3] == ["<unk>", "<|im_start|>", "<|im_end|>"]
    assert types[:3] == [int(gguf.TokenType.CONTROL)] * 3
    assert types[3] == int(gguf.TokenType.NORMAL)
    assert tokens[-1] == "[PAD319]"
    assert types[-1] == int(gguf.TokenType.UNUSED)
    merges = reader_value(reader, "tokenizer.ggml.merges")
    assert len(merges) == len(tokenizer_json["model"]["merges"])
    assert reader_value(reader, "tokenizer.ggml.bos_token_id") == 1
    assert reader_value(reader, "tokenizer.ggml.eos_token_id") == 2
    assert reader_value(reader, "tokenizer.ggml.padding_token_id") == 2
    assert reader_value(reader, "tokenizer.ggml.unknown_token_id") == 0
    assert reader_value(reader, "tokenizer.ggml.add_bos_token") is False
    assert reader_value(reader, "tokenizer.ggml.add_eos_token") is False
    assert reader_value(reader, "tokenizer.chat_template") == CHAT_TEMPLATE


def expected_tensor_names(spec, arch: str, with_output: bool) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"}
    if with_output:
        names.add("output.weight")
    for bid in range(spec.num_shadow_layers):
        for part in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ):
            names.add(f"blk.{bid}.{part}.weight")
        if arch == "qwen3":
            names |= {f"blk.{bid}.attn_q_norm.weight", f"blk.{bid}.attn_k_norm.weight"}
        if arch == "qwen2":
            names |= {f"blk.{bid}.attn_{part}.bias" for part in ("q", "k", "v")}
    return names


@pytest.mark.parametrize(
    "name,arch,with_output",
    [
        ("llama", "llama", False),
        ("qwen2", "qwen2", False),
        ("qwen3", "qwen3", False),
        ("projection", "llama", True),
        ("trained_head", "llama", True),
    ],
)
def test_tensor_names(cases, written, name, arch, with_output):
    reader = gguf.GGUFReader(written(name, "f32"))
    names = {tensor.name for tensor in reader.tensors}

    assert names == expected_tensor_names(cases(name).spec, arch, with_output)


def test_tensor_shapes_in_ggml_order(cases, written):
    spec = cases("qwen3").spec
    reader = gguf.GGUFReader(written("qwen3", "f32"))
    shapes = {tensor.name: [int(n) for n in tensor.shape] for tensor in reader.tensors}

    assert shapes["token_embd.weight"] == [64, 320]
    assert shapes["blk.0.attn_q.weight"] == [64, 4 * 32]
    assert shapes["blk.0.attn_k.weight"] == [64, 2 * 32]
    assert shapes["blk.0.attn_output.weight"] == [4 * 32, 64]
    assert shapes["blk.0.ffn_down.weight"] == [64, 64]
    assert shapes["blk.0.attn_q_norm.weight"] == [32]
    assert shapes["output_norm.weight"] == [64]
    assert spec.num_shadow_layers == 1


def tensor_data(reader: gguf.GGUFReader, name: str) -> np.ndarray:
    return next(np.array(t.data) for t in reader.tensors if t.name == name)


def test_llama_q_k_rows_reordered(cases, written):
    attn = cases("llama").spec.shadow_layers[0].self_attn
    reader = gguf.GGUFReader(written("llama", "f32"))
    q = tensor_data(reader, "blk.0.attn_q.weight")
    k = tensor_data(reader, "blk.0.attn_k.weight")
    v = tensor_data(reader, "blk.0.attn_v.weight")

    np.testing.assert_array_equal(q, interleave_rope_rows(attn.q_proj.weight, 4).detach().numpy())
    np.testing.assert_array_equal(k, interleave_rope_rows(attn.k_proj.weight, 2).detach().numpy())
    np.testing.assert_array_equal(v, attn.v_proj.weight.detach().numpy())
    assert not np.array_equal(q, attn.q_proj.weight.detach().numpy())


def test_qwen3_q_k_rows_unchanged(cases, written):
    attn = cases("qwen3").spec.shadow_layers[0].self_attn
    reader = gguf.GGUFReader(written("qwen3", "f32"))

    q = tensor_data(reader, "blk.0.attn_q.weight")
    k = tensor_data(reader, "blk.0.attn_k.weight")
    np.testing.assert_array_equal(q, attn.q_proj.weight.detach().numpy())
    np.testing.assert_array_equal(k, attn.k_proj.weight.detach().numpy())


def test_interleave_rope_rows_pairs():
    # one head of size 4: rotate-half pairs (0, 2) and (1, 3) become adjacent
    weight = torch.arange(8.0).reshape(4, 2)
    reordered = interleave_rope_rows(weight, 1)

    assert reordered[:, 0].tolist() == [0.0, 4.0, 2.0, 6.0]
    bias = interleave_rope_rows(torch.tensor([10.0, 11.0, 12.0, 13.0]), 1)
    assert bias.tolist() == [10.0, 12.0, 11.0, 13.0]


def test_interleave_rope_rows_rejects_odd_head():
    with pytest.raises(UnsupportedModelError, match="6 projection rows for 2 heads"):
        interleave_rope_rows(torch.zeros(6, 4), 2)


def test_projection_folded_into_head(cases, written):
    spec = cases("projection").spec
    reader = gguf.GGUFReader(written("projection", "f32"))
    output = tensor_data(reader, "output.weight")
    folded = (spec.shadow_head.weight.double() @ spec.projection.weight.double()).float()

    assert spec.projection is not None
    assert reader_value(reader, "llama.embedding_length") == 32
    assert output.shape == (320, 32)
    np.testing.assert_allclose(output, folded.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_trained_head_written(cases, written):
    spec = cases("trained_head").spec
    reader = gguf.GGUFReader(written("trained_head", "f32"))
    output = tensor_data(reader, "output.weight")

    assert spec.trained_shadow_head
    np.testing.assert_array_equal(output, spec.shadow_head.weight.detach().numpy())
    assert not np.array_equal(output, tensor_data(reader, "token_embd.weight"))


def test_llama3_rope_freqs_tensor(cases, written):
    reader = gguf.GGUFReader(written("llama3_rope", "f32"))
    factors = tensor_data(reader, "rope_freqs.weight")

    assert factors.shape == (8,)
    assert factors[0] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(8.0)


def test_linear_rope_metadata(written):
    reader = gguf.GGUFReader(written("linear_rope", "f32"))

    assert reader_value(reader, "qwen3.rope.scaling.type") == "linear"
    assert reader_value(reader, "qwen3.rope.scaling.factor") == pytest.approx(4.0)


def test_read_summary(cases, written):
    summary = read_gguf_summary(written("llama", "q8_0"))

    assert summary["architecture"] == "llama"
    assert summary["block_count"] == 1
    assert summary["tensor_count"] == 11
    assert summary["file_type_name"] == "MOSTLY_Q8_0"
    assert summary["tokenizer_pre"] == "gpt-2"
    assert summary["vocab_size"] == 320
    assert summary["tensor_types"]["F32"] == 3  # the three norms


# --- tokenizer ----------------------------------------------------------------------------

TOKENIZE_TEXTS = [
    "turn on the kitchen light at 2024 or 123.",
    "set the fan to 20241234, please!\n\n  it is   12:30",
    "hello café 東京 🙂 <tag> it's",
]


@pytest.mark.parametrize("name", ["llama", "qwen3", "mistral"])
def test_llama_cpp_tokenizes_like_tokenizers(cases, written, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    from tokenizers import Tokenizer

    case = cases(name)
    reference = Tokenizer.from_file(str(case.base_dir / "tokenizer.json"))
    model = llama_cpp.Llama(model_path=str(written(name, "f16")), vocab_only=True, verbose=False)
    try:
        for text in TOKENIZE_TEXTS:
            expected = reference.encode(text, add_special_tokens=False).ids
            assert model.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        chat = "<|im_start|>user\nturn on<|im_end|>"
        ids = model.tokenize(chat.encode(), add_bos=False, special=True)
        assert ids == reference.encode(chat, add_special_tokens=False).ids
        assert ids[0] == 1
        assert ids[-1] == 2
    finally:
        model.close()


def edit_tokenizer(source: Path, target: Path, edit) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy(source / name, target / name)
    data = json.loads((target / "tokenizer.json").read_text())
    edit(data)
    (target / "tokenizer.json").write_text(json.dumps(data))
    return target


def test_pre_tokenizer_digits_then_byte_level_is_smollm(cases, tmp_path):
    def split_digits(data):
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                dict(data["pre_tokenizer"]),
            ],
        }

    folder = edit_tokenizer(cases("llama").base_dir, tmp_path / "tok", split_digits)
    assert pre_tokenizer_name(folder) == "smollm"


def test_pre_tokenizer_unknown_warns_default(cases, tmp_path, caplog):
    def group_digits(data):
        data["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": False},
                dict(data["pre_tokenizer"]),
            ],
        }

    folder = edit_tokenizer(cases("llama").base_dir, tmp_path / "tok", group_digits)
    with caplog.at_level(logging.WARNING, logger="shadow_edge.export.gguf"):
        name = pre_tokenizer_name(folder)

    assert name == "default"
    assert "tokenizer.ggml.pre = 'default'" in caplog.text


@pytest.mark.real_model
def test_pre_tokenizer_smollm2_by_fingerprint(smollm2_dir):
    assert pre_tokenizer_name(smollm2_dir) == "smollm"


# --- rejected input -----------------------------------------------------------------------


def test_unknown_gguf_type_rejected(cases, tmp_path):
    case = cases("llama")
    with pytest.raises(ValueError, match="q4_k_m") as error:
        write_shadow_gguf(case.spec, case.base_dir, tmp_path / "x.gguf", "q3_bogus")

    assert "'q3_bogus'" in str(error.value)
    assert "f16" in SUPPORTED_GGUF_TYPES
    assert not (tmp_path / "x.gguf").exists()


def test_word_level_tokenizer_rejected(cases, tmp_path):
    case = cases("llama")
    save_tokenizer(tmp_path / "wordlevel", 96)
    with pytest.raises(UnsupportedModelError, match="WordLevel"):
        write_shadow_gguf(case.spec, tmp_path / "wordlevel", tmp_path / "x.gguf")

    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_missing_tokenizer_json_rejected(cases, tmp_path):
    case = cases("llama")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShadowEdgeError, match="tokenizer.json not found"):
        write_shadow_gguf(case.spec, tmp_path / "empty", tmp_path / "x.gguf")


def test_token_id_beyond_embedding_rejected(cases, tmp_path):
    case = cases("llama")

    def add_far_token(data):
        data["added_tokens"].append(
            {
                "id": 400,
                "content": "<far>",
                "special": True,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
        )

    folder = edit_tokenizer(case.base_dir, tmp_path / "tok", add_far_token)
    with pytest.raises(UnsupportedModelError, match="id 400.*320 rows"):
        write_shadow_gguf(case.spec, folder, tmp_path / "x.gguf")


def test_bpe_trained_smaller_vocab_padded(cases, tmp_path):
    case = cases("llama")
    save_bpe_tokenizer(tmp_path / "tok", 290)
    path = write_shadow_gguf(case.spec, tmp_path / "tok", tmp_path / "x.gguf", "f32")
    tokens = reader_value(gguf.GGUFReader(path), "tokenizer.ggml.tokens")

    assert len(tokens) == 320
    assert tokens[290] == "[PAD290]"


def test_base_embeddings_of_other_width_rejected(cases, tmp_path):
    spec = cases("projection").spec
    mismatched = dataclasses.replace(spec, shadow_embed=spec.base_embed)
    with pytest.raises(UnsupportedModelError, match="width 64.*hidden size 32"):
        write_shadow_gguf(mismatched, cases("projection").base_dir, tmp_path / "x.gguf")


def test_unsupported_rope_type_rejected(cases, tmp_path):
    case = cases("llama")
    config = copy.deepcopy(case.spec.shadow_config)
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    spec = dataclasses.replace(case.spec, shadow_config=config)
    with pytest.raises(UnsupportedModelError, match="'yarn'"):
        write_shadow_gguf(spec, case.base_dir, tmp_path / "x.gguf")


def test_unsupported_architecture_rejected(cases, tmp_path):
    case = cases("llama")
    config = copy.deepcopy(case.spec.shadow_config)
    config.model_type = "gemma3_text"
    spec = dataclasses.replace(case.spec, shadow_config=config)
    with pytest.raises(UnsupportedModelError, match="'gemma3_text'"):
        write_shadow_gguf(spec, case.base_dir, tmp_path / "x.gguf")


def test_qwen3_bias_rejected(cases, tmp_path):
    case = cases("qwen3")
    layers = copy.deepcopy(case.spec.shadow_layers)
    q_proj = layers[0].self_attn.q_proj
    q_proj.bias = nn.Parameter(torch.zeros(q_proj.out_features))
    spec = dataclasses.replace(case.spec, shadow_layers=layers)
    with pytest.raises(UnsupportedModelError, match="q_proj.bias"):
        write_shadow_gguf(spec, case.base_dir, tmp_path / "x.gguf")


def test_projection_with_bias_rejected(cases, tmp_path):
    spec = cases("projection").spec
    projection = copy.deepcopy(spec.projection)
    projection.bias = nn.Parameter(torch.zeros(projection.out_features))
    with pytest.raises(UnsupportedModelError, match="Linear without bias"):
        write_shadow_gguf(
            dataclasses.replace(spec, projection=projection),
            cases("projection").base_dir,
            tmp_path / "x.gguf",
        )


def test_read_summary_missing_file(tmp_path):
    with pytest.raises(ShadowEdgeError, match="not found"):
        read_gguf_summary(tmp_path / "absent.gguf")


def test_read_summary_not_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf file at all" * 4)
    with pytest.raises(ShadowEdgeError, match="not a readable GGUF file"):
        read_gguf_summary(path)


def test_invalid_tokenizer_json_rejected(cases, tmp_path):
    case = cases("llama")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ShadowEdgeError, match="not valid JSON"):
        write_shadow_gguf(case.spec, tmp_path / "tok", tmp_path / "x.gguf")

    assert not (tmp_path / "x.gguf").exists()


# --- real model ---------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_q8_0_matches_torch(tmp_path, smollm2_dir):
    """On SmolLM2 (Llama layout, tied head) q8_0 keeps tokenization and next-token choices."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    base_dir = smollm2_dir
    make_shadow_peft_adapter(tmp_path / "adapter", base_dir)
    spec = load_model(base_dir, tmp_path / "adapter")
    path = write_shadow_gguf(spec, base_dir, tmp_path / "shadow.gguf", "q8_0")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    messages = [{"role": "user", "content": "Turn on the kitchen lights at 7:30, please."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    model = llama_cpp.Llama(model_path=str(path), logits_all=True, verbose=False, n_ctx=256)
    try:
        llama_ids = model.tokenize(text.encode(), add_bos=False, special=True)
        model.eval(ids)
        actual = np.array(model.scores[: len(ids)], dtype=np.float32)
    finally:
        model.close()
    expected = torch_logits(spec, ids)

    assert read_gguf_summary(path)["tokenizer_pre"] == "smollm"
    assert llama_ids == ids
    assert np.abs(actual - expected).max() <= 0.01 * np.abs(expected).max()
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() >= 0.95


def test_runtime_gguf_backend_matches_onnx(tmp_path):
    """The runtime's llama.cpp backend generates what the ONNX detached graph generates."""
    pytest.importorskip("llama_cpp")
    from shadow_edge.export.exporter import export_bundle
    from shadow_edge.runtime import load
    from tiny_models import make_bpe_base

    base = make_bpe_base(tmp_path / "base", "llama")
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base)
    out = export_bundle(base, adapter, tmp_path / "bundle", gguf_type="f32")
    onnx_model = load(out, mode="detached")
    gguf_model = load(out, mode="detached", backend="gguf")
    for prompt in ("turn on the light", "hello there"):
        expected = onnx_model.generate(prompt, max_new_tokens=8, temperature=0.0)
        actual = gguf_model.generate(prompt, max_new_tokens=8, temperature=0.0)
        assert actual.tokens == expected.tokens
        assert actual.probabilities == pytest.approx(expected.probabilities, rel=1e-3)
