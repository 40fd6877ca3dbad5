"""Fixtures for the runtime tests: small Llama configs written as config.json folders.

CPU-mode tests use narrow or 1-layer configs (a full-width 2-layer model takes ~16 s to build on
the 2-core CI machine, ../shared/reference/environment.md §2); the full Llama 3.2 3B is only
traced (fake tensors, seconds).
"""

from __future__ import annotations

import json

import pytest

from estimator.model import preset_config


def _config(**overrides):
    d = preset_config("llama-3.2-3b")
    d.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    d.update(overrides)
    return d


CONFIGS = {
    # hidden 256, 2 layers, GQA 4:2, tied (the Llama 3.2 layout, narrow)
    "narrow": _config(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=1024,
    ),
    # odd sizes: gate/up/down have 7,200 elements, not a multiple of the 64-element bnb block;
    # untied lm_head; biases on q/k/v/o and the MLP
    "odd-untied-bias": _config(
        hidden_size=72,
        intermediate_size=100,
        num_hidden_layers=1,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=24,
        vocab_size=500,
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
    ),
    # real Llama 3.2 3B widths, 1 layer, small vocabulary (keeps the CPU build and bnb load fast)
    "real-width-1layer": _config(num_hidden_layers=1, vocab_size=2048),
}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """name -> folder holding that config.json."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, cfg in CONFIGS.items():
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = str(d)
    return out


@pytest.fixture(scope="session", autouse=True)
def _checkpoint_cache(tmp_path_factory):
    """Random bnb checkpoints go to a per-session folder, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LLM_VRAM_CHECKPOINTS", str(tmp_path_factory.mktemp("checkpoints")))
    yield
    mp.undo()
