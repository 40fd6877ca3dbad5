"""Model configs: parameter counts derived by hand, and clear errors for unsupported configs."""

import json

import pytest

from estimator import InvalidSpecError, UnknownNameError, from_hf_config, load_model, param_breakdown, parse_config_text
from estimator.model import preset_config, preset_for, tensors

LLAMA_3B = dict(hidden=3072, layers=28, heads=24, kv=8, d=128, inter=8192, vocab=128256)


def test_llama_3_2_3b_parameters_golden():
    """3,212,749,824 parameters: embedding V*H (tied, once) + 28 layers of q,k,v,o,gate,up,down + 57 norms."""
    c = LLAMA_3B
    embed = c["vocab"] * c["hidden"]  # 394,002,432
    attn = 2 * c["hidden"] * c["heads"] * c["d"] + 2 * c["hidden"] * c["kv"] * c["d"]
    mlp = 3 * c["hidden"] * c["inter"]
    norms = (2 * c["layers"] + 1) * c["hidden"]  # 175,104
    expected = embed + c["layers"] * (attn + mlp) + norms
    assert expected == 3_212_749_824
    spec = load_model("llama-3.2-3b")
    assert spec.num_params == expected
    assert param_breakdown(spec) == {
        "embedding": 394_002_432,
        "attention": 704_643_072,
        "mlp": 2_113_929_216,
        "norms": 175_104,
        "lm_head": 0,
    }


def test_llama_3_2_3b_config_is_the_real_one():
    """The shipped config.json is the real one, not the wrong 2,048 / 26 layers / 6 KV heads spec card."""
    cfg = preset_config("llama-3.2-3b")
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (3072, 28, 8)
    wrong_spec = from_hf_config(dict(cfg, hidden_size=2048, num_hidden_layers=26, num_key_value_heads=6))
    assert 1.5e9 < wrong_spec.num_params < 2.2e9  # "about 2B": the spec card cannot be a 3B model


@pytest.mark.parametrize(
    "name,expected",
    [
        # Llama 3.2 1B: 2048 hidden, 16 layers, 32 heads x 64, 8 KV heads, 8192 MLP, tied: 1,235,814,400.
        ("llama-3.2-1b", 128256 * 2048 + 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192) + 33 * 2048),
        # Llama 3.1 8B: untied lm_head, 14336 MLP: 8,030,261,248.
        ("llama-3.1-8b", 2 * 128256 * 4096 + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 65 * 4096),
    ],
)
def test_other_presets_parameters(name, expected):
    assert load_model(name).num_params == expected


def test_mistral_7b_v01_parameters():
    """Mistral 7B v0.1 config; 7,241,732,096 parameters (its published count)."""
    cfg = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    }
    assert from_hf_config(cfg).num_params == 7_241_732_096


def test_qwen2_has_qkv_bias_and_qwen3_has_qk_norm():
    """Qwen2.5-0.5B: bias on q,k,v (not o), tied: 494,032,768 parameters (its published count)."""
    q2 = {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }
    s = from_hf_config(q2)
    assert (s.attention_bias, s.attention_out_bias) == (True, False)
    assert s.num_params == 494_032_768
    q3 = {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "attention_bias": False,
    }
    s3 = from_hf_config(q3)
    assert s3.qk_norm and s3.head_dim == 128
    norm_names = [t.name for t in tensors(s3) if t.name.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(norm_names) == 2 * 28
    # Qwen3-0.6B: 596,049,920 parameters (151936*1024 + 28*(1024*(2048+1024+1024) + 2048*1024 + 3*1024*3072
    # + 2*1024 + 2*128) + 1024).
    assert s3.num_params == 151936 * 1024 + 28 * (1024 * 4096 + 2048 * 1024 + 3 * 1024 * 3072 + 2 * 1024 + 256) + 1024


BASE = preset_config("llama-3.2-3b")


@pytest.mark.parametrize(
    "change,field",
    [
        ({"num_local_experts": 8}, "num_local_experts"),
        ({"is_encoder_decoder": True}, "is_encoder_decoder"),
        ({"model_type": "t5"}, "model_type"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_hidden_layers": "28"}, "num_hidden_layers"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"vocab_size": -5}, "vocab_size"),
        ({"num_key_value_heads": 7}, "num_key_value_heads"),
        ({"tie_word_embeddings": "yes"}, "tie_word_embeddings"),
        ({"num_hidden_layers": 10**9}, "num_hidden_layers"),
        ({"intermediate_size": 10**15}, "intermediate_size"),
    ],
)
def test_bad_configs_name_the_field(change, field):
    cfg = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(InvalidSpecError, match=field):
        from_hf_config(cfg)


def test_missing_model_type_and_non_json():
    with pytest.raises(InvalidSpecError, match="model_type"):
        from_hf_config({k: v for k, v in BASE.items() if k != "model_type"})
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        parse_config_text(b"{not json")
    with pytest.raises(InvalidSpecError, match="1 MiB"):
        parse_config_text(b" " * (2 << 20))
    with pytest.raises(InvalidSpecError, match="JSON object"):
        parse_config_text(b"[1, 2]")


def test_config_path_and_unknown_preset(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(BASE))
    assert load_model(str(p)).num_params == 3_212_749_824
    assert load_model(str(tmp_path)).num_params == 3_212_749_824
    with pytest.raises(UnknownNameError, match="llama-9b"):
        load_model("llama-9b")


# Names as real logs and hubs spell them (tests/check/fixtures: vLLM model ids, Ollama tags,
# GGUF general.name), each with the preset it must map to; and names that must not map.
PRESET_NAMES = {
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "unsloth/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "llama3.2:1b": "llama-3.2-1b",  # Ollama tag
    "llama3.2:3b-instruct-q4_K_M": "llama-3.2-3b",
    "llama3.1-8B": "llama-3.1-8b",
    "Llama 3.2 3B Instruct": "llama-3.2-3b",  # GGUF general.name
    "/models/llama_3.2_1b.gguf": "llama-3.2-1b",
    "LLAMA-3.1-8B": "llama-3.1-8b",
}
NOT_PRESETS = (
    "Meta-Llama-3-8B-Instruct",  # Llama 3 (8K window), not 3.1
    "meta-llama/Llama-3.1-70B-Instruct",
    "Llama-3.2-11B-Vision",
    "llama3.2:30b",
    "Llama-3.1-8.5B",
    "Whole_Model",
    "Qwen2.5-3B",
    "",
    None,
)


@pytest.mark.parametrize("name,preset", sorted(PRESET_NAMES.items()))
def test_preset_for_maps_the_spellings_logs_use(name, preset):
    assert preset_for(name) == preset


@pytest.mark.parametrize("name", NOT_PRESETS)
def test_preset_for_refuses_other_models(name):
    assert preset_for(name) is None


def test_a_name_the_filesystem_refuses_is_an_unknown_model_not_an_oserror():
    """Found by tests/runtime/test_settings_fuzz.py: a 400-character name made Path.is_dir raise
    OSError (ENAMETOOLONG) out of load_model; it must be the one-line unknown-model error."""
    with pytest.raises(UnknownNameError, match=r"model must be one of .*\.\.\. \(File name too long\)"):
        load_model("1" * 400)
