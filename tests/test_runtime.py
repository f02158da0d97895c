"""The torch-free runtime: sampling, stop strings, chat template, cache bounds and reuse."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shadow_edge.errors import GenerationError
from shadow_edge.runtime import Sampler, SamplingParams, load
from shadow_edge.runtime.sampling import apply_repetition_penalty, filter_top_p, softmax

CHAT = [{"role": "user", "content": "turn on the light in the kitchen"}]


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load(tiny_bundle, mode="combined")


def test_seeded_sampling_repeats(model):
    first = model.generate(CHAT, max_new_tokens=12, temperature=1.5, seed=7)
    again = model.generate(CHAT, max_new_tokens=12, temperature=1.5, seed=7)
    other = model.generate(CHAT, max_new_tokens=12, temperature=1.5, seed=8)
    assert first.tokens == again.tokens
    assert first.tokens != other.tokens


def test_top_k_keeps_allowed_tokens():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=5.0, top_k=3, seed=0))
    drawn = {sampler(logits, np.array([], np.int64))[0] for _ in range(300)}
    assert drawn == {0, 1, 2}


def test_top_p_keeps_allowed_tokens():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    kept = np.isfinite(filter_top_p(logits, 0.7))
    assert kept.tolist() == [True, True, False, False]
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.7, seed=1))
    drawn = {sampler(logits, np.array([], np.int64))[0] for _ in range(300)}
    assert drawn == {0, 1}


def test_top_p_keeps_top_token_always():
    logits = np.array([10.0, 0.0, 0.0], dtype=np.float32)
    kept = np.isfinite(filter_top_p(logits, 0.01))
    assert kept.tolist() == [True, False, False]


def test_repetition_penalty_matches_transformers():
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = np.array([2.0, -1.0, 0.5, -3.0, 1.0], dtype=np.float32)
    seen = np.array([0, 1, 1, 3], dtype=np.int64)
    ours = apply_repetition_penalty(logits, seen, 1.3)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(
        torch.tensor([seen.tolist()]), torch.tensor([logits.tolist()])
    )[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_greedy_probability_is_softmax(model):
    result = model.generate(CHAT, max_new_tokens=4, temperature=0.0)
    ids = model.encode(CHAT)
    logits = model.logits(ids)[-1]
    assert result.probabilities[0] == pytest.approx(float(softmax(logits)[result.tokens[0]]))
    assert all(0 < p <= 1 for p in result.probabilities)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.5},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"repetition_penalty": 0.0},
        {"max_new_tokens": 0},
        {"max_new_tokens": 2.5},
    ],
)
def test_invalid_sampling_values(model, kwargs):
    with pytest.raises(GenerationError) as error:
        model.generate(CHAT, **kwargs)
    name = next(iter(kwargs))
    assert name in str(error.value)


def test_stop_string_cuts_text(model):
    full = model.generate(CHAT, max_new_tokens=12, temperature=0.0)
    words = full.text.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = model.generate(CHAT, max_new_tokens=12, temperature=0.0, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert stop not in cut.text


def test_stream_pieces_join_to_text(model):
    steps = list(model.stream(CHAT, max_new_tokens=10, temperature=0.0))
    result = model.generate(CHAT, max_new_tokens=10, temperature=0.0)
    assert "".join(s.text for s in steps) == result.text
    assert [s.generated_tokens for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].finish_reason == result.finish_reason
    assert all(s.finish_reason is None for s in steps[:-1])


def test_chat_template_matches_transformers(tiny_llama, model):
    from transformers import AutoTokenizer

    base, _ = tiny_llama
    tokenizer = AutoTokenizer.from_pretrained(base)
    messages = [
        {"role": "system", "content": "you are help"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "what time is it"},
    ]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert model.codec.chat_template.render(messages) == expected
    assert model.encode(messages) == tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_unknown_chat_role(model):
    with pytest.raises(GenerationError, match="unknown role 'robot'"):
        model.generate([{"role": "robot", "content": "hi"}])


def test_prompt_longer_than_context(tiny_llama, tmp_path):
    from shadow_edge.export.exporter import export_bundle

    base, adapter = tiny_llama
    out = export_bundle(base, adapter, tmp_path / "bundle", context=32)
    short = load(out, mode="combined")
    prompt = " ".join(["light"] * 40)
    with pytest.raises(GenerationError, match="prompt is 40 tokens but the context length is 32"):
        short.generate(prompt, max_new_tokens=4)

    truncated = short.generate(prompt, max_new_tokens=4, truncate=True)
    assert truncated.prompt_tokens == 31
    assert truncated.generated_tokens == 1
    assert truncated.finish_reason == "length"

    fits = short.generate(" ".join(["light"] * 20), max_new_tokens=50)
    assert fits.finish_reason == "length"
    assert 20 + fits.generated_tokens <= 32


def test_prefix_reuse_equals_fresh(tiny_bundle, model):
    turn = model.generate(CHAT, max_new_tokens=6, temperature=0.0)
    follow_up = CHAT + [
        {"role": "assistant", "content": turn.text},
        {"role": "user", "content": "set the fan off"},
    ]
    reused = model.generate(follow_up, max_new_tokens=6, temperature=0.0)
    fresh = load(tiny_bundle, mode="combined").generate(follow_up, max_new_tokens=6)
    assert reused.tokens == fresh.tokens
    np.testing.assert_allclose(reused.probabilities, fresh.probabilities, rtol=1e-4)


def test_reset_clears_cache(model):
    model.generate(CHAT, max_new_tokens=3)
    assert model.backend.tokens
    model.reset()
    assert model.backend.tokens == []
    assert model.backend.cache_nbytes == 0


def test_interrupted_stream_leaves_model_usable(tiny_bundle, model):
    expected = load(tiny_bundle, mode="combined").generate(CHAT, max_new_tokens=8).tokens
    with pytest.raises(KeyboardInterrupt):
        for step in model.stream(CHAT, max_new_tokens=8, temperature=0.0):
            if step.generated_tokens == 3:
                raise KeyboardInterrupt
    assert model.generate(CHAT, max_new_tokens=8, temperature=0.0).tokens == expected


def test_token_ids_out_of_vocab(model):
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        model.generate([5, 100000], max_new_tokens=2)


def test_runtime_without_torch(tiny_bundle):
    script = textwrap.dedent(
        f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from shadow_edge.runtime import load
        for mode in ("combined", "detached"):
            result = load({str(tiny_bundle)!r}, mode=mode).generate("turn on the light",
                                                                     max_new_tokens=3)
            assert result.generated_tokens >= 1
        assert "torch" not in sys.modules
        assert "transformers" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_runtime_extra_has_no_torch():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    base = " ".join(pyproject["project"]["dependencies"])
    assert "torch" not in base
    assert "transformers" not in base
