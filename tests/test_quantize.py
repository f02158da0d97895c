"""int8 and int4 graphs on tiny models: which ops change, what stays float, and accuracy."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from shadow_edge import bundle
from shadow_edge.export.exporter import export_bundle
from shadow_edge.export.quantize import adapter_nodes
from shadow_edge.runtime import load
from tiny_models import make_base, make_shadow_peft_adapter


@pytest.fixture(scope="module")
def quantized_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    base = make_base(root / "base", "qwen3", hidden_size=128, intermediate_size=256)
    adapter = make_shadow_peft_adapter(root / "adapter", base, shadow_intermediate_size=64)
    return export_bundle(base, adapter, root / "bundle", precisions=["fp32", "int8", "int4"])


def _ops(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _node_names(path) -> list[str]:
    return [node.name for node in onnx.load(str(path)).graph.node]


def _bits(path) -> set[int]:
    model = onnx.load(str(path))
    return {
        attr.i
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        for attr in node.attribute
        if attr.name == "bits"
    }


def test_int8_ops(quantized_bundle):
    manifest = bundle.read_manifest(quantized_bundle)
    path = quantized_bundle / manifest.backbone.files["int8"]
    ops = _ops(path)
    assert ops.get("MatMulNBits", 0) >= 4 * 7 + 1  # 7 projections per layer, plus the head
    assert _bits(path) == {8}
    assert ops.get("DequantizeLinear", 0) >= 1  # the int8 embedding table


def test_int4_ops(quantized_bundle):
    manifest = bundle.read_manifest(quantized_bundle)
    path = quantized_bundle / manifest.backbone.files["int4"]
    ops = _ops(path)
    assert _bits(path) == {4}
    assert ops.get("GatherBlockQuantized", 0) == 1
    assert manifest.source["int4_block_size"] == 32
    assert manifest.source["int4_scheme"] == "affine"
    assert sum(n.endswith("_offsets") for n in _node_names(path)) == ops["MatMulNBits"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_adapter_stays_float(quantized_bundle, precision):
    manifest = bundle.read_manifest(quantized_bundle)
    model = onnx.load(str(quantized_bundle / manifest.backbone.files[precision]))
    kept = [n for n in model.graph.node if n.name in set(adapter_nodes(model))]
    matmuls = [n for n in kept if n.op_type == "MatMul"]
    # Two injection matrices per adapted layer (1..3) and four update matrices for layers 1
    # and 2: the last update's output is unused, so the exporter drops it.
    assert len(matmuls) == 3 * 2 + 2 * 4
    assert not any(n.op_type == "MatMulNBits" for n in kept)


def test_sizes_shrink(quantized_bundle):
    manifest = bundle.read_manifest(quantized_bundle)

    def size(precision):
        files = manifest.graph_files(precision)
        return sum((quantized_bundle / name).stat().st_size for name in files)

    assert size("int8") < 0.45 * size("fp32")
    assert size("int4") < size("int8")


@pytest.mark.parametrize("precision, tolerance", [("int8", 0.05), ("int4", 0.5)])
def test_logits_close_to_fp32(quantized_bundle, precision, tolerance):
    ids = list(range(3, 40))
    for mode in ("combined", "detached"):
        exact = load(quantized_bundle, mode=mode, precision="fp32").logits(ids)
        quantized = load(quantized_bundle, mode=mode, precision=precision).logits(ids)
        relative = np.abs(quantized - exact).max() / np.abs(exact).max()
        assert relative < tolerance, f"{precision} {mode}: {relative:.3f}"


def test_int4_block_size_checked(tmp_path):
    from shadow_edge.export.quantize import quantize_int4

    with pytest.raises(ValueError, match="power of two >= 16, got 24"):
        quantize_int4(tmp_path / "in.onnx", tmp_path / "out.onnx", block_size=24)


def test_int8_quantizer_drops_preprocessing_hint(tiny_bundle, tmp_path, caplog):
    from shadow_edge.export.quantize import quantize_int8

    with caplog.at_level(logging.INFO):
        quantize_int8(tiny_bundle / "shadow.onnx", tmp_path / "shadow.int8.onnx")
    assert (tmp_path / "shadow.int8.onnx").is_file()
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]
    assert "shadow.int8.onnx" in caplog.text  # our own log line still passes


def _q4_1_weight(rng, k: int, n: int, block: int = 32) -> np.ndarray:
    """A [K, N] weight that llama.cpp's Q4_1 stores exactly: scale * code + minimum per block."""
    codes = rng.integers(0, 16, size=(n, k // block, block))
    # Q4_1 maps each block's minimum to code 0 and its maximum to code 15.
    codes[..., 0], codes[..., -1] = 0, 15
    scale = rng.uniform(0.01, 0.05, size=(n, k // block, 1))
    minimum = rng.uniform(-0.4, 0.0, size=(n, k // block, 1))
    return (codes * scale + minimum).reshape(n, k).T.astype(np.float32)


def _two_matmul_graph(path, w_a: np.ndarray, w_b: np.ndarray):
    """x -> MatMul(w_a) -> y and x -> MatMul(w_b) -> z, both reading the same input."""
    from onnx import TensorProto, helper, numpy_helper

    k = w_a.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_a"], ["y"], name="/a/MatMul"),
            helper.make_node("MatMul", ["x", "w_b"], ["z"], name="/b/MatMul"),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", w_a.shape[1]]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "seq", w_b.shape[1]]),
        ],
        [numpy_helper.from_array(w_a, "w_a"), numpy_helper.from_array(w_b, "w_b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))


def _run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("block_size", [16, 32])
def test_affine_int4_stores_q4_1_weights_exactly(tmp_path, block_size):
    from shadow_edge.export.quantize import quantize_int4

    rng = np.random.default_rng(0)
    w_a, w_b = _q4_1_weight(rng, 96, 40, block_size), _q4_1_weight(rng, 96, 24, block_size)
    w_a[:block_size, 0] = 0.25  # a constant block: scale 0
    _two_matmul_graph(tmp_path / "fp32.onnx", w_a, w_b)
    for scheme in ("affine", "symmetric"):
        quantize_int4(tmp_path / "fp32.onnx", tmp_path / f"{scheme}.onnx", block_size, scheme)
    # Identity rows read the dequantized weights back out of the graph: one nonzero per
    # block survives MatMulNBits' int8 activation blocks without rounding.
    eye = np.eye(96, dtype=np.float32)[None]
    y, z = _run(tmp_path / "affine.onnx", eye)
    np.testing.assert_allclose(y[0], w_a, atol=1e-6)
    np.testing.assert_allclose(z[0], w_b, atol=1e-6)
    y_sym, _ = _run(tmp_path / "symmetric.onnx", eye)
    assert np.abs(y_sym[0] - w_a).max() > 1e-3  # symmetric codes cannot hold these weights

    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    y, z = _run(tmp_path / "affine.onnx", x)
    assert np.abs(y - x @ w_a).max() < 0.02 * np.abs(x @ w_a).max()
    assert np.abs(z - x @ w_b).max() < 0.02 * np.abs(x @ w_b).max()

    ops = _ops(tmp_path / "affine.onnx")
    # One block-sum MatMul for the shared input, one offset MatMul per weight.
    assert ops == {"MatMulNBits": 2, "MatMul": 3, "Add": 2}


def test_affine_int4_partial_block_fallback(tmp_path):
    from shadow_edge.export.quantize import quantize_int4

    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 16)).astype(np.float32) * 0.1
    _two_matmul_graph(tmp_path / "fp32.onnx", w, w[:, :8].copy())
    quantize_int4(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", 32, "affine")
    ops = _ops(tmp_path / "int4.onnx")
    assert ops == {"MatMulNBits": 2}  # onnxruntime's symmetric blocks, padded along K
    x = rng.standard_normal((1, 3, 48)).astype(np.float32)
    y, _ = _run(tmp_path / "int4.onnx", x)
    assert np.abs(y - x @ w).max() < 0.1 * np.abs(x @ w).max()


def test_int4_scheme_checked(tmp_path):
    from shadow_edge.export.quantize import quantize_int4

    with pytest.raises(ValueError, match="one of affine, symmetric; got 'q4_1'"):
        quantize_int4(tmp_path / "in.onnx", tmp_path / "out.onnx", scheme="q4_1")


def test_symmetric_int4_bundle(tmp_path):
    base = make_base(tmp_path / "base", "llama", hidden_size=128, intermediate_size=256)
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base, shadow_intermediate_size=64)
    out = export_bundle(
        base, adapter, tmp_path / "bundle", precisions=["fp32", "int4"], int4_scheme="symmetric"
    )
    manifest = bundle.read_manifest(out)
    assert manifest.source["int4_scheme"] == "symmetric"
    names = _node_names(out / manifest.backbone.files["int4"])
    assert any(n.endswith("_Q4") for n in names)
    assert not any(n.endswith("_offsets") for n in names)
    ids = list(range(3, 40))
    exact = load(out, mode="combined", precision="fp32").logits(ids)
    quantized = load(out, mode="combined", precision="int4").logits(ids)
    assert np.abs(quantized - exact).max() < 0.5 * np.abs(exact).max()


def test_affine_int4_fallback_in_manifest(tmp_path, caplog):
    # Hidden size 96 is not a multiple of 64, so every MatMul reading the hidden state falls
    # back to symmetric blocks; the MLP down projection (K = 192) stays affine.
    base = make_base(tmp_path / "base", "llama", hidden_size=96, intermediate_size=192)
    adapter = make_shadow_peft_adapter(tmp_path / "adapter", base, shadow_intermediate_size=64)
    with caplog.at_level(logging.WARNING):
        out = export_bundle(
            base, adapter, tmp_path / "bundle", precisions=["int4"], int4_block_size=64
        )
    manifest = bundle.read_manifest(out)
    notes = [n for n in manifest.notes if n.startswith("int4:")]
    assert len(notes) == 1
    fallback = int(notes[0].split()[1])
    graphs = [out / manifest.backbone.files["int4"], out / manifest.shadow.files["int4"]]
    quantized = sum(_ops(path).get("MatMulNBits", 0) for path in graphs)
    affine = sum(n.endswith("_offsets") for path in graphs for n in _node_names(path))
    assert affine > 0
    assert fallback == quantized - affine
    assert "smaller --int4-block-size" in caplog.text


def test_affine_int4_no_fallback_note(quantized_bundle):
    manifest = bundle.read_manifest(quantized_bundle)
    assert not [n for n in manifest.notes if n.startswith("int4:")]
