"""Fixtures for the training tests: a narrow Llama 3.2 layout (GQA 4:2, tied) as a config folder."""

from __future__ import annotations

import json

import pytest

from estimator.model import preset_config

# hidden 256, 2 layers, GQA 4:2, tied: small enough for real CPU steps and bitsandbytes on CPU.
NARROW = {
    **preset_config("llama-3.2-3b"),
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
}


@pytest.fixture
def narrow() -> dict:
    return dict(NARROW)


@pytest.fixture
def narrow_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(NARROW))
    return str(tmp_path)


@pytest.fixture
def narrow_llama3_vocab_dir(tmp_path):
    """NARROW with Llama 3's 128,256-token vocabulary: the loss's fp32 [N, V] tensors then exceed
    any layer's backward temporaries, as in the real model (traced only: fake tensors)."""
    (tmp_path / "config.json").write_text(json.dumps({**NARROW, "vocab_size": 128_256}))
    return str(tmp_path)
