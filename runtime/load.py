"""Load a Llama-family model through transformers at one quantization, and count what it holds.

Weights come from one of three places (``settings["weights"]``):

- ``"random"``: built from the config, memory-identical to the real checkpoint. Unquantized
  models are initialised directly on the device; bitsandbytes models need a checkpoint on disk
  (transformers quantizes while loading), so a random bf16 checkpoint is saved once per config
  under ``$LLM_VRAM_CHECKPOINTS`` (default ``~/.cache/llm-vram-estimator/checkpoints``).
- a local checkpoint folder (safetensors only),
- a hub id (needs network; a clear error when offline).

``trust_remote_code`` is never set. ``stored_tensors(model)`` lists every tensor the loaded model
holds: parameters (a tied lm_head once, deduplicated by storage), buffers, and bitsandbytes
quantization state (``QuantState`` absmax/code/offset/state2, int8 ``SCB``), which
``get_memory_footprint()`` leaves out.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from estimator.quant import compute_dtype

from .settings import BNB_QUANTS, SettingsError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINT_DTYPE = torch.bfloat16  # Llama 3.2 ships bf16 safetensors (config.json torch_dtype)
CACHE_DIR_MODE = 0o755  # what mkdir gives under the usual 022 umask (mkdtemp makes 0700)


def config_dict(model_ref: str) -> dict[str, Any]:
    """The HF config.json dict of a preset name, a config.json path, or a folder holding one."""
    from estimator.model import PRESETS, preset_config

    if model_ref in PRESETS:
        return preset_config(model_ref)
    p = Path(model_ref)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise SettingsError(f"model must be one of {', '.join(PRESETS)} or a path to a config.json: {model_ref!r}")
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise SettingsError(f"model: {model_ref!r} is not valid JSON: {e}") from None


def hf_config(cfg: dict[str, Any], attn: str):
    from transformers import AutoConfig

    d = {k: v for k, v in cfg.items() if k not in ("architectures", "auto_map", "transformers_version")}
    if "auto_map" in cfg:
        raise SettingsError("model: configs that need trust_remote_code (auto_map) are not loaded")
    conf = AutoConfig.for_model(**d)
    conf._attn_implementation = attn
    return conf


def quantization_config(s: dict[str, Any]):
    """BitsAndBytesConfig for a bnb quant name, or None. The 4-bit compute dtype is always explicit."""
    q = s["quant"]
    if q not in BNB_QUANTS:
        return None
    from transformers import BitsAndBytesConfig

    if q == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.split("-")[0],
        bnb_4bit_use_double_quant=q.endswith("-dq"),
        bnb_4bit_compute_dtype=DTYPES[s["bnb_compute_dtype"]],
    )


def checkpoint_root() -> Path:
    return Path(os.environ.get("LLM_VRAM_CHECKPOINTS", Path.home() / ".cache" / "llm-vram-estimator" / "checkpoints"))


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created if missing), blocking until it is free."""
    with lock_path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def random_checkpoint(cfg: dict[str, Any], device: str = "cpu") -> Path:
    """A random bf16 safetensors checkpoint for ``cfg``, saved once and reused (keyed by the config).

    Safe for concurrent callers (processes or threads): the first builds it under a per-key
    ``flock`` into a fresh temporary folder next to it and renames that into place in one step;
    the others wait for the lock and reuse the finished copy. A failed save removes its
    temporary folder; a folder at the final path is always complete."""
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    root = checkpoint_root()
    path = root / key
    if _complete(path):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f"{key}.lock"):
        if _complete(path):  # another process finished it while this one waited
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", suffix=".tmp", dir=root))
        try:
            _save_random(cfg, device, tmp)
            os.chmod(tmp, CACHE_DIR_MODE)
            if path.is_dir():  # a leftover without weights (never written by this function)
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def _save_random(cfg: dict[str, Any], device: str, folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    conf = hf_config(cfg, "sdpa")
    build = device if device in ("cpu", "cuda") else "cpu"
    with torch.device(build):
        model = AutoModelForCausalLM.from_config(conf, dtype=CHECKPOINT_DTYPE)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    if build == "cuda":
        torch.cuda.empty_cache()


def quiet() -> None:
    """Silence progress bars and per-call warnings (bnb int8 warns on every matmul)."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")
    warnings.filterwarnings("ignore", message=".*Failed to load CPU gemm_4bit.*")


def load(s: dict[str, Any], device: str):
    """The model for settings ``s`` on ``device`` ("cpu" or "cuda"), in eval mode."""
    from transformers import AutoModelForCausalLM

    quiet()
    attn, q = s["attn"], s["quant"]
    qc = quantization_config(s)
    dtype = DTYPES[compute_dtype(q)]
    weights = s["weights"]
    if weights == "random" and qc is None:
        conf = hf_config(config_dict(s["model"]), attn)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
        return model.eval()
    if weights == "random":
        source, local = str(random_checkpoint(config_dict(s["model"]), device)), True
    else:
        p = Path(weights)
        local = p.is_dir()
        if local and not any(p.glob("*.safetensors")):
            raise SettingsError(f"weights: {weights!r} holds no *.safetensors files (only safetensors are loaded)")
        if not local and (weights.startswith((".", "/", "~")) or weights.count("/") != 1):
            raise SettingsError(f"weights must be 'random', a local checkpoint folder or a hub id: {weights!r}")
        source = weights
    kw = dict(
        dtype=dtype,
        attn_implementation=attn,
        use_safetensors=True,
        trust_remote_code=False,
        device_map=device,
        local_files_only=local,
    )
    if qc is not None:
        kw["quantization_config"] = qc
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kw)
    except OSError as e:
        if local:
            raise
        raise SettingsError(
            f"weights: cannot fetch hub id {weights!r} (offline? gated?): {str(e).splitlines()[0]}"
        ) from None
    if weights != "random":  # also a hub id, whose config only now is known (runtime.measure.check_weights)
        from .measure import weights_mismatch

        diff = weights_mismatch(config_dict(s["model"]), model.config.to_dict())
        if diff:
            raise SettingsError(f"weights: the checkpoint is not {s['model']!r}: {diff}: {weights!r}")
    if device == "cpu":
        # bitsandbytes 0.50 repacks 4-bit weights into an AVX512-BF16 layout on the first CPU
        # forward (Linear4bit.forward -> _convert_weight_packed_for_cpu), which changes what the
        # model stores and fails for out_features not divisible by its block. Keep the portable
        # dequantize + linear path, which is also the closer analogue of the CUDA fallback.
        for mod in model.modules():
            if hasattr(mod, "support_avx512bf16_for_cpu"):
                mod.support_avx512bf16_for_cpu = False
    return model.eval()


def _quant_state_tensors(p) -> list[torch.Tensor]:
    out = []
    qs = getattr(p, "quant_state", None)
    if qs is not None:
        for name in ("absmax", "code", "offset"):
            t = getattr(qs, name, None)
            if isinstance(t, torch.Tensor):
                out.append(t)
        st2 = getattr(qs, "state2", None)
        if st2 is not None:
            out += [
                t for t in (getattr(st2, "absmax", None), getattr(st2, "code", None)) if isinstance(t, torch.Tensor)
            ]
    for name in ("SCB", "CB"):
        t = getattr(p, name, None)
        if isinstance(t, torch.Tensor):
            out.append(t)
    return out


def stored_tensors(model) -> list[tuple[str, str, torch.Tensor]]:
    """(name, part, tensor) for every distinct storage the model holds; part is parameters,
    quant_state or buffers, as in ``estimator.quant.WeightBytes``."""
    seen: set[int] = set()
    out: list[tuple[str, str, torch.Tensor]] = []

    def add(name: str, part: str, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        if key not in seen:
            seen.add(key)
            out.append((name, part, t))

    for mname, mod in model.named_modules():
        pre = mname + "." if mname else ""
        for pname, p in mod.named_parameters(recurse=False):
            add(pre + pname, "parameters", p)
            for i, t in enumerate(_quant_state_tensors(p)):
                add(f"{pre}{pname}.quant_state[{i}]", "quant_state", t)
        state = getattr(mod, "state", None)  # Linear8bitLt.state (MatmulLtState) holds CB/SCB after a forward
        for name in ("CB", "SCB"):
            t = getattr(state, name, None)
            if isinstance(t, torch.Tensor):
                add(f"{pre}state.{name}", "quant_state", t)
        for bname, b in mod.named_buffers(recurse=False):
            if b is not None:
                add(pre + bname, "buffers", b)
    return out


def weight_parts(model) -> dict[str, int]:
    """Exact stored bytes by part, with the estimator's ``WeightBytes`` field names."""
    parts = {"parameters_bytes": 0, "quant_state_bytes": 0, "buffers_bytes": 0}
    for _, part, t in stored_tensors(model):
        parts[part + "_bytes"] += t.untyped_storage().nbytes()
    parts["total_bytes"] = sum(parts.values())
    return parts


def cache_bytes(cache) -> int:
    """Bytes of the K/V tensors a transformers Cache holds (each storage once)."""
    seen: set[int] = set()
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor) and t.numel():
                key = t.untyped_storage()._cdata
                if key not in seen:
                    seen.add(key)
                    total += t.untyped_storage().nbytes()
    return total
