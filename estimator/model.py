"""Model architecture: ``ModelSpec`` and its tensor inventory.

A ``ModelSpec`` holds the shape fields of a Llama-family decoder, under Hugging Face
config names, and is built from a ``config.json`` dict (``from_hf_config``) or a preset
(``load_preset``). ``tensors(spec)`` lists every tensor the loaded transformers model
holds (parameters and buffers), which is the single source for parameter counts and
weight bytes in every quantization scheme.

Source of truth for Llama 3.2 3B is its ``config.json`` (shipped as
``estimator/data/models/llama-3.2-3b.json``): hidden 3072, 28 layers, 24 heads, 8 KV heads,
head_dim 128, intermediate 8192, vocab 128256, tied embeddings. That gives
3,212,749,824 parameters (embedding 394,002,432; 28 x 100,663,296 linear weights;
57 x 3072 RMSNorm weights). Spec cards that list hidden 2048 / 26 layers / 6 KV heads
add up to about 2B parameters and are wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidSpecError, UnknownNameError
from .units import shown

PRESETS = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")
DEFAULT_PRESET = "llama-3.2-3b"

# model_type -> (q/k/v bias rule, o bias rule, q/k RMSNorm). "cfg" means config.attention_bias.
# Derived from the attention classes in transformers 5.x: LlamaAttention and MistralAttention
# (bias=config.attention_bias on q,k,v,o; Mistral has no bias key -> False), Qwen2Attention
# (bias=True on q,k,v; False on o), Qwen3Attention (config.attention_bias; q_norm/k_norm over
# head_dim), GraniteAttention (as Llama).
_BiasRule = Literal["cfg"] | bool
_FAMILIES: dict[str, tuple[_BiasRule, _BiasRule, bool]] = {
    "llama": ("cfg", "cfg", False),
    "mistral": ("cfg", "cfg", False),
    "granite": ("cfg", "cfg", False),
    "qwen2": (True, False, False),
    "qwen3": ("cfg", "cfg", True),
}
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")


# Sanity bounds, far above any real model (the largest public configs have ~128 layers, 16K
# hidden, 53K intermediate, 256K vocab): they keep a hostile config from hanging a solver.
_LIMITS = {
    "hidden_size": 1 << 20,
    "num_hidden_layers": 4096,
    "num_attention_heads": 1 << 16,
    "num_key_value_heads": 1 << 16,
    "head_dim": 1 << 16,
    "intermediate_size": 1 << 22,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 31,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Shape of a Llama-family decoder-only model. Field names follow Hugging Face configs."""

    name: str = "custom"
    model_type: str = "llama"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    attention_bias: bool = False  # bias on q_proj, k_proj, v_proj
    attention_out_bias: bool = False  # bias on o_proj
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3-style RMSNorm on q and k (weight of head_dim)
    partial_rotary_factor: float = 1.0
    torch_dtype: str = "bfloat16"  # dtype of the checkpoint

    def __post_init__(self) -> None:
        for f, hi in _LIMITS.items():
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidSpecError(f"{f} must be an integer: {v!r}")
            if v <= 0:
                raise InvalidSpecError(f"{f} must be > 0: {v!r}")
            if v > hi:
                raise InvalidSpecError(f"{f} must be at most {hi:,}: {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise InvalidSpecError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads: {self.num_key_value_heads}"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise InvalidSpecError(f"partial_rotary_factor must be in (0, 1]: {self.partial_rotary_factor!r}")

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_params(self) -> int:
        """Parameters, with a tied embedding counted once (as ``model.parameters()`` does)."""
        return num_params(self)

    def to_config(self) -> dict[str, Any]:
        """The spec as a plain dict (round-trips through ``ModelSpec(**d)``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of the loaded model. ``shape`` is the logical (unquantized) shape.

    kind: "embedding", "lm_head", "linear", "bias", "norm" (parameters) or "buffer".
    For "linear", shape is (out_features, in_features) as in ``nn.Linear.weight``.
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    layer: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _layer_tensors(spec: ModelSpec, i: int) -> list[Tensor]:
    H, I, q, kv = spec.hidden_size, spec.intermediate_size, spec.q_dim, spec.kv_dim
    p = f"model.layers.{i}."
    out = [
        Tensor(p + "self_attn.q_proj.weight", (q, H), "linear", i),
        Tensor(p + "self_attn.k_proj.weight", (kv, H), "linear", i),
        Tensor(p + "self_attn.v_proj.weight", (kv, H), "linear", i),
        Tensor(p + "self_attn.o_proj.weight", (H, q), "linear", i),
        Tensor(p + "mlp.gate_proj.weight", (I, H), "linear", i),
        Tensor(p + "mlp.up_proj.weight", (I, H), "linear", i),
        Tensor(p + "mlp.down_proj.weight", (H, I), "linear", i),
    ]
    if spec.attention_bias:
        out += [
            Tensor(p + "self_attn.q_proj.bias", (q,), "bias", i),
            Tensor(p + "self_attn.k_proj.bias", (kv,), "bias", i),
            Tensor(p + "self_attn.v_proj.bias", (kv,), "bias", i),
        ]
    if spec.attention_out_bias:
        out.append(Tensor(p + "self_attn.o_proj.bias", (H,), "bias", i))
    if spec.mlp_bias:
        out += [
            Tensor(p + "mlp.gate_proj.bias", (I,), "bias", i),
            Tensor(p + "mlp.up_proj.bias", (I,), "bias", i),
            Tensor(p + "mlp.down_proj.bias", (H,), "bias", i),
        ]
    if spec.qk_norm:
        out += [
            Tensor(p + "self_attn.q_norm.weight", (spec.head_dim,), "norm", i),
            Tensor(p + "self_attn.k_norm.weight", (spec.head_dim,), "norm", i),
        ]
    out += [
        Tensor(p + "input_layernorm.weight", (H,), "norm", i),
        Tensor(p + "post_attention_layernorm.weight", (H,), "norm", i),
    ]
    return out


@functools.lru_cache(maxsize=256)
def tensors(spec: ModelSpec) -> tuple[Tensor, ...]:
    """Every tensor of the loaded ``*ForCausalLM`` model; a tied lm_head is not listed twice.

    Buffers: transformers 5.x ``LlamaRotaryEmbedding`` registers ``inv_freq`` and
    ``original_inv_freq`` (rotary_dim/2 float32 each, kept fp32 by ``from_pretrained``).
    There is no cos/sin cache buffer.
    """
    out = [Tensor("model.embed_tokens.weight", (spec.vocab_size, spec.hidden_size), "embedding")]
    for i in range(spec.num_hidden_layers):
        out += _layer_tensors(spec, i)
    out.append(Tensor("model.norm.weight", (spec.hidden_size,), "norm"))
    if not spec.tie_word_embeddings:
        out.append(Tensor("lm_head.weight", (spec.vocab_size, spec.hidden_size), "lm_head"))
    half = spec.rotary_dim // 2
    out += [
        Tensor("model.rotary_emb.inv_freq", (half,), "buffer"),
        Tensor("model.rotary_emb.original_inv_freq", (half,), "buffer"),
    ]
    return tuple(out)


@functools.lru_cache(maxsize=256)
def param_breakdown(spec: ModelSpec) -> dict[str, int]:
    """Parameter counts by group: embedding, attention, mlp, norms, lm_head (0 when tied)."""
    groups = {"embedding": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0}
    for t in tensors(spec):
        if t.kind == "buffer":
            continue
        if t.kind in ("embedding", "lm_head"):
            groups[t.kind] += t.numel
        elif t.kind == "norm" and ".self_attn." not in t.name:
            groups["norms"] += t.numel
        elif ".mlp." in t.name:
            groups["mlp"] += t.numel
        else:
            groups["attention"] += t.numel
    return groups


def num_params(spec: ModelSpec) -> int:
    return sum(param_breakdown(spec).values())


def _get(cfg: Mapping[str, Any], key: str, default: Any = ..., kind: type = int) -> Any:
    if key not in cfg or cfg[key] is None:
        if default is ...:
            raise InvalidSpecError(f"config is missing required field {key!r}")
        return default
    v = cfg[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise InvalidSpecError(f"{key} must be an integer: {shown(v)}")
    if kind is bool and not isinstance(v, bool):
        raise InvalidSpecError(f"{key} must be true or false: {shown(v)}")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise InvalidSpecError(f"{key} must be a number: {shown(v)}")
    return v


def from_hf_config(cfg: Mapping[str, Any], name: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json`` dict. Pure: no hub access.

    Raises InvalidSpecError naming the field for unsupported or malformed configs:
    mixture of experts, encoder-decoder, missing keys, wrong types, non-positive sizes,
    heads not divisible by KV heads.
    """
    if not isinstance(cfg, Mapping):
        raise InvalidSpecError(f"config must be a JSON object: got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str):
        raise InvalidSpecError(f"config is missing required field 'model_type' (got {shown(model_type)})")
    if cfg.get("is_encoder_decoder"):
        raise InvalidSpecError(f"is_encoder_decoder: encoder-decoder models are not supported: {model_type!r}")
    for k in _MOE_KEYS:
        if cfg.get(k):
            raise InvalidSpecError(f"{k}: mixture-of-experts models are not supported: {shown(cfg[k])}")
    if model_type not in _FAMILIES:
        raise InvalidSpecError(
            f"model_type {shown(model_type)} is not a supported Llama-family decoder "
            f"(supported: {', '.join(sorted(_FAMILIES))})"
        )
    qkv_rule, o_rule, qk_norm = _FAMILIES[model_type]
    attention_bias = _get(cfg, "attention_bias", False, bool)
    hidden = _get(cfg, "hidden_size")
    heads = _get(cfg, "num_attention_heads")
    if hidden <= 0:
        raise InvalidSpecError(f"hidden_size must be > 0: {hidden!r}")
    if heads <= 0:
        raise InvalidSpecError(f"num_attention_heads must be > 0: {heads!r}")
    if cfg.get("head_dim") is None and hidden % heads:
        raise InvalidSpecError(
            f"head_dim is absent and hidden_size ({hidden}) is not divisible by num_attention_heads: {heads}"
        )
    head_dim = _get(cfg, "head_dim", hidden // heads)
    dtype = cfg.get("torch_dtype", cfg.get("dtype")) or "bfloat16"
    if not isinstance(dtype, str):
        raise InvalidSpecError(f'torch_dtype must be a dtype name like "bfloat16": {dtype!r}')
    rope = cfg.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
        raise InvalidSpecError(f"rope_parameters must be an object: {shown(rope)}")
    prf = _get(cfg, "partial_rotary_factor", _get(rope, "partial_rotary_factor", 1.0, float), float)
    ref = cfg.get("_name_or_path")
    if ref is not None and not isinstance(ref, str):
        raise InvalidSpecError(f"_name_or_path must be a string: {shown(ref)}")
    return ModelSpec(
        name=name or ref or model_type,
        model_type=model_type,
        hidden_size=hidden,
        num_hidden_layers=_get(cfg, "num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=_get(cfg, "num_key_value_heads", heads),
        head_dim=head_dim,
        intermediate_size=_get(cfg, "intermediate_size"),
        vocab_size=_get(cfg, "vocab_size"),
        tie_word_embeddings=_get(cfg, "tie_word_embeddings", False, bool),
        max_position_embeddings=_get(cfg, "max_position_embeddings", 2048),
        attention_bias=attention_bias if qkv_rule == "cfg" else qkv_rule,
        attention_out_bias=attention_bias if o_rule == "cfg" else o_rule,
        mlp_bias=_get(cfg, "mlp_bias", False, bool),
        qk_norm=qk_norm,
        partial_rotary_factor=float(prf),
        torch_dtype=str(dtype) if dtype else "bfloat16",
    )


def preset_config(name: str) -> dict[str, Any]:
    """The shipped ``config.json`` dict of a preset."""
    if name not in PRESETS:
        raise UnknownNameError(f"model must be one of {', '.join(PRESETS)} or a path to a config.json: {name!r}")
    text = resources.files("estimator").joinpath(f"data/models/{name}.json").read_text()
    cfg: dict[str, Any] = json.loads(text)  # each shipped preset is a JSON object
    return cfg


@functools.lru_cache(maxsize=16)
def load_preset(name: str = DEFAULT_PRESET) -> ModelSpec:
    return from_hf_config(preset_config(name), name=name)


def _preset_name_pattern(preset: str) -> re.Pattern[str]:
    """``llama-3.2-3b`` -> a pattern for the ways logs and hubs spell it: ``Llama-3.2-3B-Instruct``,
    ``meta-llama/Llama-3.2-3B``, ``llama3.2:3b`` (Ollama), ``Llama 3.2 3B Instruct`` (GGUF
    general.name), ``llama_3.2_3b``. No digit may follow the size (``3b`` is not ``30b``)."""
    family, version, size = preset.split("-")
    sep = r"[\s_.:-]*"
    return re.compile(rf"{family}{sep}{re.escape(version)}{sep}{size}(?!\d)", re.I)


_PRESET_NAME_PATTERNS = tuple((_preset_name_pattern(p), p) for p in PRESETS)


def preset_for(name: str | None) -> str | None:
    """The preset a model name refers to (a hub id, a path, a GGUF ``general.name``, an Ollama tag),
    or None. The one place model names are mapped to presets (the log checkers use it)."""
    if not name:
        return None
    return next((p for rx, p in _PRESET_NAME_PATTERNS if rx.search(name)), None)


MAX_CONFIG_BYTES = 1 << 20  # a real config.json is a few KB; refuse anything over 1 MiB


def load_model(ref: str | Path | Mapping[str, Any] | ModelSpec) -> ModelSpec:
    """A ModelSpec from a preset name, a path to a config.json (or its folder), or a dict."""
    if isinstance(ref, ModelSpec):
        return ref
    if isinstance(ref, Mapping):
        return from_hf_config(ref)
    s = str(ref)
    if s in PRESETS:
        return load_preset(s)
    unknown = f"model must be one of {', '.join(PRESETS)} or a path to a config.json: {shown(s)}"
    p = Path(s)
    try:
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise UnknownNameError(unknown)
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidSpecError(f"model config {shown(s)} is larger than 1 MiB; not a config.json")
        data = p.read_bytes()
    except OSError as e:  # a name the filesystem refuses (too long, no permission): not a config.json
        raise UnknownNameError(f"{unknown} ({e.strerror or type(e).__name__})") from None
    return parse_config_text(data, name=p.parent.name or p.stem)


def parse_config_text(data: bytes | str, name: str | None = None) -> ModelSpec:
    """Parse uploaded/pasted config.json text (size-capped) into a ModelSpec."""
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidSpecError(f"config.json must be under 1 MiB: got {len(data):,} bytes")
    try:
        cfg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidSpecError(f"config.json is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidSpecError("config.json is nested too deeply to be a model config") from None
    return from_hf_config(cfg, name=name)
