"""Trainable parameters of a fine-tuning method, counted exactly as PEFT counts them.

Methods: ``full`` (every parameter trains), ``lora`` (PEFT LoRA on an unquantized base) and
``qlora`` (PEFT LoRA on a bitsandbytes 4-bit base).

A LoRA adapter on an ``nn.Linear(in, out)`` adds ``lora_A`` [r, in] and ``lora_B`` [out, r]:
``r x (in + out)`` parameters (peft 0.21 ``tuners/lora/layer.py`` ``LoraLayer.update_layer``); on
an ``nn.Embedding(V, H)`` it adds ``lora_embedding_A`` [r, V] and ``lora_embedding_B`` [H, r]:
``r x (V + H)`` (``Embedding.update_layer``). No bias unless ``lora_bias`` (not modelled).

Targets are the short module names PEFT matches (``q_proj`` ...), given here as q, k, v, o, gate,
up, down, plus ``lm_head`` and ``embed``. ``all-linear`` is PEFT's shorthand
(``tuners_utils._maybe_include_all_linear_layers``): every ``nn.Linear`` except the output
embedding (``model.get_output_embeddings()``, the lm_head), which for a Llama decoder is the seven
projections of every layer.

``print_trainable_parameters`` (peft 0.21 ``peft_model.py``, ``get_nb_trainable_parameters``)
sums ``named_parameters()`` (a tied embedding once) and counts a bitsandbytes ``Params4bit``
as ``numel x 2 x element_size``: the packed uint8 weight of ``n`` elements is stored as
``ceil(n / 2)`` bytes, so it counts ``2 x ceil(n / 2)``, the logical ``n`` for an even ``n``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import InvalidSpecError
from ..model import ModelSpec, num_params, tensors
from ..units import cdiv

METHODS = ("full", "lora", "qlora")
# Short target names -> the module name PEFT matches (Llama-family attribute names).
TARGET_MODULES = {
    "q": "q_proj",
    "k": "k_proj",
    "v": "v_proj",
    "o": "o_proj",
    "gate": "gate_proj",
    "up": "up_proj",
    "down": "down_proj",
    "lm_head": "lm_head",
    "embed": "embed_tokens",
}
LAYER_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ALL_LINEAR = "all-linear"
MAX_RANK = 1 << 16


@dataclass(frozen=True, slots=True)
class Adapter:
    """One LoRA adapter: the module it wraps, its A and B shapes."""

    module: str  # e.g. "model.layers.0.self_attn.q_proj"
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    kind: str  # "linear" or "embedding"

    @property
    def numel(self) -> int:
        return self.a_shape[0] * self.a_shape[1] + self.b_shape[0] * self.b_shape[1]


def parse_targets(targets: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Target names in canonical order: ``all-linear`` or a comma list / sequence of q, k, v, o,
    gate, up, down, lm_head, embed (``q_proj`` style names are accepted too). ``all-linear`` may be
    combined with lm_head and embed."""
    items = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t).strip() for t in targets]
    items = [t for t in items if t]
    if not items:
        raise InvalidSpecError(f"targets must name at least one module: {targets!r}")
    long_to_short = {v: k for k, v in TARGET_MODULES.items()}
    out: set[str] = set()
    for t in items:
        if t.lower() == ALL_LINEAR:
            out.update(LAYER_TARGETS)
        elif t in TARGET_MODULES:
            out.add(t)
        elif t in long_to_short:
            out.add(long_to_short[t])
        else:
            raise InvalidSpecError(
                f"targets must be {ALL_LINEAR} or a comma list of {', '.join(TARGET_MODULES)}: {t!r}"
            )
    return tuple(t for t in TARGET_MODULES if t in out)


def targets_label(targets: tuple[str, ...]) -> str:
    """``all-linear`` (+ extras) when every layer projection is targeted, else the comma list."""
    if all(t in targets for t in LAYER_TARGETS):
        return ",".join([ALL_LINEAR] + [t for t in targets if t not in LAYER_TARGETS])
    return ",".join(targets)


@functools.lru_cache(maxsize=256)
def adapters(spec: ModelSpec, rank: int, targets: tuple[str, ...]) -> tuple[Adapter, ...]:
    """Every LoRA adapter PEFT creates for ``targets`` at ``rank``, in module order."""
    wanted = {TARGET_MODULES[t] for t in targets}
    out: list[Adapter] = []
    for t in tensors(spec):
        if t.kind == "linear":
            mod = t.name.removesuffix(".weight")
            if mod.rsplit(".", 1)[-1] in wanted:
                o, i = t.shape
                out.append(Adapter(mod, (rank, i), (o, rank), "linear"))
        elif t.kind == "embedding" and "embed_tokens" in wanted:
            V, H = t.shape
            out.append(Adapter("model.embed_tokens", (rank, V), (H, rank), "embedding"))
    if "lm_head" in wanted:  # nn.Linear(H, V), tied or not: PEFT wraps the module
        V, H = spec.vocab_size, spec.hidden_size
        out.append(Adapter("lm_head", (rank, H), (V, rank), "linear"))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def base_count(spec: ModelSpec, method: str) -> int:
    """Parameters of the base model as ``get_nb_trainable_parameters`` counts them: a 4-bit
    Linear's packed weight as ``2 x ceil(n / 2)``, everything else by numel, a tied embedding once."""
    if method != "qlora":
        return num_params(spec)
    n = 0
    for t in tensors(spec):
        if t.kind == "buffer":
            continue
        n += 2 * cdiv(t.numel, 2) if t.kind == "linear" else t.numel
    return n


@dataclass(frozen=True, slots=True)
class TrainableParams:
    """PEFT's (trainable, all) count and the line ``print_trainable_parameters`` prints."""

    trainable: int
    all: int

    @property
    def percent(self) -> float:
        return 100 * self.trainable / self.all

    def line(self) -> str:
        """Exactly peft 0.21's ``print_trainable_parameters`` line."""
        return f"trainable params: {self.trainable:,d} || all params: {self.all:,d} || trainable%: {self.percent:.4f}"


def check_method(method: str) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidSpecError(f"method must be one of {', '.join(METHODS)}: {method!r}")
    return method


@functools.lru_cache(maxsize=256)
def trainable_params(
    spec: ModelSpec, method: str, rank: int = 16, targets: tuple[str, ...] = LAYER_TARGETS
) -> TrainableParams:
    """Trainable and all parameters of ``method``: full trains every parameter (no adapter);
    lora and qlora train only the adapters, which ``all`` includes."""
    check_method(method)
    if method == "full":
        n = num_params(spec)
        return TrainableParams(n, n)
    lora = sum(a.numel for a in adapters(spec, rank, targets))
    return TrainableParams(lora, base_count(spec, method) + lora)
