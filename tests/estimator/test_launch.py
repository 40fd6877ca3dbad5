"""estimator.launch: the command that realises a setting the estimator answered, per engine.

Expectations are derived by hand from the engines' flags (see the module docstring for the sources):
Llama 3.2 3B has 28 layers, 8 KV heads of 128, so a 16-token vLLM block in bf16 holds
2 (K, V) x 28 x 8 x 128 x 2 B x 16 = 1,835,008 B, and llama.cpp's "all layers" is 28 + 1 (the output).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from estimator import make_settings
from estimator.cli import main
from estimator.engines import llamacpp_estimate_report, vllm_estimate_report, vllm_fit_report
from estimator.gpus import get_gpu
from estimator.launch import (
    Launch,
    format_launch,
    launch_for,
    llamacpp_launch,
    model_id,
    ollama_launch,
    shell_command,
    transformers_launch,
    vllm_launch,
)
from estimator.model import load_preset

ROOT = Path(__file__).resolve().parents[2]
S3 = load_preset("llama-3.2-3b")
BLOCK_3B = 2 * 28 * 8 * 128 * 2 * 16  # bytes of one 16-token KV block, all layers, bf16
L4 = get_gpu("l4-24gb")


def _flag(args: tuple[str, ...], flag: str) -> str:
    """The value after ``flag`` in an argv."""
    return args[args.index(flag) + 1]


def _roundtrips(launch: Launch) -> None:
    """The command is what a shell would split back into the environment and the argv."""
    assert shlex.split(launch.command) == [f"{k}={v}" for k, v in launch.env.items()] + list(launch.args)


# --- transformers --------------------------------------------------------------------------------


def test_3b_nf4_8k_on_a_4060_gives_the_exact_bitsandbytes_config():
    s = make_settings("llama-3.2-3b", quant="nf4", context=8192, gpu="rtx-4060-8gb")
    la = transformers_launch(s)
    assert la.engine == "transformers" and la.language == "python"
    assert la.options["model"] == "meta-llama/Llama-3.2-3B"
    assert la.options["from_pretrained"] == {
        "dtype": "bf16",
        "attn_implementation": "sdpa",
        "device_map": "cuda",
        "quantization_config": {
            "BitsAndBytesConfig": {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": False,
                "bnb_4bit_compute_dtype": "torch.bfloat16",
            }
        },
    }
    assert la.options["generate"] == {"max_new_tokens": 32}  # dynamic bf16 cache: generate's default
    assert (
        'quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", '
        "bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype=torch.bfloat16)" in la.args
    )
    assert "dtype=torch.bfloat16" in la.args and 'attn_implementation="sdpa"' in la.args
    assert "[1, 8160] token ids" in la.command  # 8,192 = 8,160 prompt + 32 new
    compile(la.command, "launch", "exec")


def test_bitsandbytes_variants_and_int8():
    la = transformers_launch(make_settings("llama-3.2-3b", quant="fp4-dq", bnb_compute_dtype="fp16"))
    cfg = la.options["from_pretrained"]["quantization_config"]["BitsAndBytesConfig"]
    assert cfg == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "torch.float16",
    }
    la = transformers_launch(make_settings("llama-3.2-3b", quant="int8"))
    assert la.options["from_pretrained"]["quantization_config"] == {"BitsAndBytesConfig": {"load_in_8bit": True}}
    assert "quantization_config=BitsAndBytesConfig(load_in_8bit=True)" in la.args
    la = transformers_launch(make_settings("llama-3.2-3b", quant="bf16"))
    assert "quantization_config" not in la.options["from_pretrained"] and "BitsAndBytesConfig" not in la.command


@pytest.mark.parametrize(
    "kv,cfg",
    [
        ("int4", {"backend": "quanto", "nbits": 4}),
        ("int8", {"backend": "hqq", "nbits": 8}),  # quanto takes 2 or 4 bits only
        ("fp8", {"backend": "fp8"}),
    ],
)
def test_quantized_kv_cache(kv, cfg):
    la = transformers_launch(make_settings("llama-3.2-3b", quant="bf16", kv_dtype=kv))
    assert la.options["generate"] == {"max_new_tokens": 32, "cache_implementation": "quantized", "cache_config": cfg}
    compile(la.command, "launch", "exec")


def test_static_cache_chunked_prefill_and_padding():
    s = make_settings(
        "llama-3.1-8b",
        quant="nf4",
        context=8192,
        new_tokens=64,
        cache="static",
        max_cache_len=16384,
        prefill_chunk=1024,
        padding=True,
    )
    gen = transformers_launch(s).options["generate"]
    assert gen == {
        "max_new_tokens": 64,
        "cache_implementation": "static",
        "max_cache_len": 16384,
        "prefill_chunk_size": 1024,
        "attention_mask": "attention_mask",
    }


def test_prequantized_checkpoints_take_no_quantization_config():
    la = transformers_launch(make_settings("llama-3.2-3b", quant="gptq-int4"))
    assert la.options["from_pretrained"]["dtype"] == "fp16"  # GPTQ kernels run in fp16
    assert "quantization_config" not in la.options["from_pretrained"]
    assert "replace with a GPTQ int4 (group 128) checkpoint" in la.command
    assert any("pre-quantized" in n for n in la.notes)
    compile(la.command, "launch", "exec")


def test_executorch_has_no_transformers_launch():
    la = transformers_launch(make_settings("llama-3.2-3b", quant="et-4bit"))
    assert la.args == () and "ExecuTorch" in la.command


def test_model_ids():
    assert model_id("llama-3.1-8b") == "meta-llama/Llama-3.1-8B"
    assert model_id("my-finetune") == "my-finetune" and model_id("custom") == "MODEL" and model_id(None) == "MODEL"


# --- vLLM ----------------------------------------------------------------------------------------


def test_vllm_fit_on_an_l4_launches_the_fit_answer():
    fit = vllm_fit_report(S3, L4.memory_bytes, {"quant": "bf16"}, gpu_name=L4.name, gpu_arch=L4.arch)
    la = vllm_launch(fit["estimate"])
    assert la.args[:3] == ("vllm", "serve", "meta-llama/Llama-3.2-3B")
    assert _flag(la.args, "--max-model-len") == str(fit["max_context"])
    assert _flag(la.args, "--gpu-memory-utilization") == "0.9"
    assert _flag(la.args, "--dtype") == "bfloat16" and "--quantization" not in la.args
    assert "--tensor-parallel-size" not in la.args and "--enforce-eager" not in la.args and la.env == {}
    (alt,) = la.alternatives
    blocks = fit["estimate"].details["num_gpu_blocks"]
    assert alt.args == la.args + ("--kv-cache-memory-bytes", str(blocks * BLOCK_3B))
    assert la.options["kv_cache_memory_bytes"] == blocks * BLOCK_3B


def test_vllm_flags_follow_the_settings():
    r = vllm_estimate_report(
        S3,
        4 * L4.memory_bytes,
        {"quant": "bitsandbytes", "kv_dtype": "fp8"},
        max_model_len=32768,
        quantization="bitsandbytes",
        kv_cache_dtype="fp8",
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        enforce_eager=True,
        max_num_seqs=64,
        gpu_memory_utilization=0.85,
        version="v0",
    )
    la = vllm_launch(r, model="/models/llama 3b")
    assert la.args[2] == "/models/llama 3b"
    assert (_flag(la.args, "--tensor-parallel-size"), _flag(la.args, "--pipeline-parallel-size")) == ("2", "2")
    assert (_flag(la.args, "--quantization"), _flag(la.args, "--kv-cache-dtype")) == ("bitsandbytes", "fp8")
    assert (_flag(la.args, "--max-num-seqs"), _flag(la.args, "--gpu-memory-utilization")) == ("64", "0.85")
    assert "--enforce-eager" in la.args
    assert la.env == {"VLLM_USE_V1": "0"} and la.alternatives == ()  # V0: no --kv-cache-memory-bytes
    _roundtrips(la)


# --- llama.cpp / Ollama --------------------------------------------------------------------------


def test_llamacpp_q4km_parallel_4_at_8k():
    r = llamacpp_estimate_report(S3, "q4_k_m", 8192, parallel=4, gpu_memory_bytes=12 << 30)
    la = llamacpp_launch(r)
    assert la.args[:3] == ("llama-server", "-m", "Llama-3.2-3B-Q4_K_M.gguf")
    joined = " ".join(la.args)
    assert "-c 8192 -np 4" in joined and _flag(la.args, "-ngl") == "29"  # 28 layers + the output layer
    assert _flag(la.args, "-fa") == "off" and "-ctk" not in la.args and "-ub" not in la.args
    assert "-kvu" not in la.args  # 4 slots: per-sequence streams, as estimated
    (ol,) = la.alternatives
    assert ol.engine == "ollama" and ol.args == ("ollama", "serve")
    assert ol.env == {"OLLAMA_CONTEXT_LENGTH": "2048", "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_FLASH_ATTENTION": "0"}
    assert ol.options == {"num_ctx": 2048, "num_gpu": 29}  # 2048 x 4 = the 8192 cells llama.cpp allocates


def test_llamacpp_flash_quantized_kv_offload_and_ubatch():
    r = llamacpp_estimate_report(S3, "q8_0", 32768, flash_attn=True, kv_dtype="q8_0", n_gpu_layers=20, n_ubatch=1024)
    la = llamacpp_launch(r)
    assert (_flag(la.args, "-ngl"), _flag(la.args, "-fa"), _flag(la.args, "-ub")) == ("20", "on", "1024")
    assert (_flag(la.args, "-ctk"), _flag(la.args, "-ctv")) == ("q8_0", "q8_0")
    assert "-kvu" in la.args and "-b" not in la.args  # one sequence: keep llama-server from making 4 slots
    ol = ollama_launch(r)
    assert ol.env["OLLAMA_KV_CACHE_TYPE"] == "q8_0" and ol.env["OLLAMA_FLASH_ATTENTION"] == "1"
    assert ol.options == {"num_ctx": 32768, "num_gpu": 20, "num_batch": 1024}
    big = llamacpp_launch(llamacpp_estimate_report(S3, "q4_k_m", 8192, n_ubatch=4096))
    assert (_flag(big.args, "-b"), _flag(big.args, "-ub")) == ("4096", "4096")  # ubatch = min(batch, ubatch)


def test_llamacpp_early_2025_build_spells_flash_attention_as_a_switch():
    r = llamacpp_estimate_report(S3, "q4_k_m", 8192, flash_attn=True, version="2025-01")
    la = llamacpp_launch(r)
    assert la.args[-1] == "-fa" and "on" not in la.args and "-kvu" not in la.args
    off = llamacpp_launch(llamacpp_estimate_report(S3, "q4_k_m", 8192, version="2025-01"))
    assert "-fa" not in off.args


def test_gguf_path_and_uneven_parallel():
    r = llamacpp_estimate_report(S3, "q4_k_m", 10000, parallel=3, settings={"gguf": "/data/my models/it's.gguf"})
    la = llamacpp_launch(r)
    assert _flag(la.args, "-m") == "/data/my models/it's.gguf"
    ol = la.alternatives[0]
    assert ol.env["OLLAMA_CONTEXT_LENGTH"] == "3333" and any("not a multiple" in n for n in ol.notes)


# --- every command is copy-pasteable -------------------------------------------------------------


def _all_shell_launches() -> list[Launch]:
    out: list[Launch] = []
    fit = vllm_fit_report(S3, L4.memory_bytes, {"quant": "bf16"}, gpu_name=L4.name, gpu_arch=L4.arch)
    v = vllm_launch(fit["estimate"], model='we\'ird "name" $HOME')
    out += [v, *v.alternatives]
    for kw in ({}, {"parallel": 4}, {"flash_attn": True, "kv_dtype": "q4_0", "n_gpu_layers": 7}):
        la = llamacpp_launch(llamacpp_estimate_report(S3, "q4_k_m", 8192, settings={"gguf": "a b;c.gguf"}, **kw))
        out += [la, *la.alternatives]
    return out


def test_every_command_round_trips_through_shlex_split():
    launches = _all_shell_launches()
    assert {la.engine for la in launches} == {"vllm", "llama.cpp", "ollama"}
    for la in launches:
        _roundtrips(la)
    assert shlex.split(shell_command(("echo", "a b", "'"), {"X": "1 2"})) == ["X=1 2", "echo", "a b", "'"]


def test_to_dict_is_json_and_format_lists_alternatives():
    la = llamacpp_launch(llamacpp_estimate_report(S3, "q4_k_m", 8192, parallel=4))
    d = json.loads(json.dumps(la.to_dict()))
    assert d["engine"] == "llama.cpp" and d["args"] == list(la.args) and d["alternatives"][0]["engine"] == "ollama"
    text = format_launch(la)
    assert text.splitlines()[0] == f"launch: {la.command}"
    assert f"  or (ollama): {la.alternatives[0].command}" in text
    py = format_launch(transformers_launch(make_settings("llama-3.2-3b")))
    assert py.startswith("launch (python):\n    import torch")


def test_launch_for_picks_the_engine_of_a_result():
    fit = vllm_fit_report(S3, L4.memory_bytes, gpu_name=L4.name, gpu_arch=L4.arch)
    d = {**fit, "estimate": fit["estimate"].to_dict()}
    assert launch_for(d).engine == "vllm"
    assert launch_for({"engine": "llama.cpp", "max_context": 0}) is None  # nothing fits: no launch
    s = make_settings("llama-3.2-3b")
    assert launch_for({"settings": s.to_dict(), "engine": "transformers"}, s).engine == "transformers"


# --- CLI -----------------------------------------------------------------------------------------


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    return out


def test_cli_text_prints_the_launch_after_the_table(capsys):
    out = run(
        capsys, "estimate", "--model", "llama-3.2-3b", "--quant", "nf4", "--context", "8k", "--gpu", "rtx-4060-8gb"
    )
    lines = out.splitlines()
    i = lines.index("launch (python):")
    assert lines[i - 1].startswith("  on 8.00 GiB: fits")
    assert '            bnb_4bit_quant_type="nf4",' in lines
    out = run(
        capsys,
        "estimate",
        "--engine",
        "llama.cpp",
        "--quant",
        "q4_k_m",
        "--context",
        "8192",
        "--parallel",
        "4",
        "--gpu",
        "rtx-4070-12gb",
    )
    assert "launch: llama-server -m Llama-3.2-3B-Q4_K_M.gguf -c 8192 -np 4 -ngl 29 -fa off" in out
    assert (
        "  or (ollama): OLLAMA_CONTEXT_LENGTH=2048 OLLAMA_NUM_PARALLEL=4 OLLAMA_FLASH_ATTENTION=0 ollama serve" in out
    )
    out = run(capsys, "fit", "--engine", "vllm", "--gpu", "l4-24gb")
    launch = next(line for line in out.splitlines() if line.startswith("launch: "))
    assert launch.startswith("launch: vllm serve meta-llama/Llama-3.2-3B --max-model-len ")
    assert "--gpu-memory-utilization 0.9 " in launch


def test_cli_json_has_a_launch_object(capsys):
    d = json.loads(run(capsys, "fit", "--engine", "vllm", "--gpu", "l4-24gb", "--json"))
    args = tuple(d["launch"]["args"])
    assert _flag(args, "--max-model-len") == str(d["max_context"]) == str(d["estimate"]["max_model_len"])
    assert _flag(args, "--gpu-memory-utilization") == "0.9"
    alt = d["launch"]["alternatives"][0]
    assert _flag(tuple(alt["args"]), "--kv-cache-memory-bytes") == str(d["estimate"]["num_gpu_blocks"] * BLOCK_3B)
    d = json.loads(run(capsys, "estimate", "--quant", "nf4", "--context", "8k", "--kv-dtype", "int4", "--json"))
    assert d["launch"]["engine"] == "transformers"
    assert d["launch"]["options"]["generate"]["cache_config"] == {"backend": "quanto", "nbits": 4}
    d = json.loads(run(capsys, "fit", "--quant", "nf4", "--gpu", "rtx-4060-8gb", "--json"))
    assert f"[1, {d['max_context'] - 32}] token ids" in d["launch"]["command"]
    d = json.loads(run(capsys, "fit", "--engine", "llama.cpp", "--quant", "q4_k_m", "--gpu", "rtx-4060-8gb", "--json"))
    assert _flag(tuple(d["launch"]["args"]), "-c") == str(d["max_context"])
    d = json.loads(run(capsys, "fit", "--quant", "bf16", "--gpu-memory", "1GiB", "--json"))
    assert d["max_context"] == 0 and "launch" not in d  # nothing fits: nothing to launch


# --- app -----------------------------------------------------------------------------------------


@pytest.fixture
def app(monkeypatch):
    pytest.importorskip("streamlit")
    pytest.importorskip("plotly")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VRAM_APP_CUDA", "0")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return lambda path: AppTest.from_file(str(ROOT / path), default_timeout=60)


def test_calculator_export_tab_shows_the_transformers_code(app):
    from app import state

    at = app("streamlit_app.py").run()
    at.session_state[state.DETAILS_TAB] = "Export"
    at.run()
    assert not at.exception
    (code,) = [c for c in at.code if c.language == "python"]
    s = make_settings(
        "llama-3.2-3b",
        quant=state.DEFAULTS[state.QUANT],
        context=state.DEFAULTS[state.CONTEXT],
        gpu=state.DEFAULTS[state.GPU],
    )
    assert code.value == transformers_launch(s).command
    assert "AutoModelForCausalLM.from_pretrained(" in code.value


def test_engines_page_shows_the_serving_commands(app):
    from app import state

    at = app("app/pages/engines.py")
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.2-3b",
        "quant": "bf16",
        "context": 8192,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": "rtx-4090-24gb",
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }
    at.run()
    assert not at.exception
    assert "Launch with these settings" in [h.value for h in at.subheader]
    bash = [c.value for c in at.code if c.language == "bash"]
    assert len(bash) == 4
    assert bash[0].startswith("vllm serve meta-llama/Llama-3.2-3B --max-model-len 8192 --gpu-memory-utilization 0.9 ")
    assert "--kv-cache-memory-bytes" in bash[1]
    assert bash[2] == "llama-server -m Llama-3.2-3B-BF16.gguf -c 8192 -np 1 -ngl 29 -kvu -fa off"
    assert bash[3] == "OLLAMA_CONTEXT_LENGTH=8192 OLLAMA_NUM_PARALLEL=1 OLLAMA_FLASH_ATTENTION=0 ollama serve"
    for c in bash:
        shlex.split(c)


def test_engines_page_without_a_vllm_start_has_no_vllm_command(app):
    from app import state

    at = app("app/pages/engines.py")
    at.session_state[state.SETTINGS] = {
        "model": "llama-3.1-8b",
        "quant": "bf16",
        "context": 131072,
        "batch": 1,
        "kv_dtype": "auto",
        "attn": "sdpa",
        "gpu": "t4-16gb",
        "gpu_memory_bytes": None,
        "prefill_chunk": None,
    }
    at.run()
    assert not at.exception
    bash = [c.value for c in at.code if c.language == "bash"]
    assert not any(c.startswith("vllm") for c in bash) and bash[0].startswith("llama-server ")
