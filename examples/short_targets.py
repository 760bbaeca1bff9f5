"""The demo's short SFT targets (`examples/data/medical_o1_demo_short.json`), derived from the demo rows.

A 135M model trained on the full medical-o1 targets writes 400-550 tokens before `## Final Response`; the demo's
RL rollouts have 72 new tokens, so such a model would never reach an answer and every reward would be 0. Here each
row keeps its `Question`, its chain of thought cut to the first sentences (2 to 4 of them, stopping once 40 words
are reached) and, as the final response, the row's `Ground-True Answer`: the answer the RL reward checks. Row i of
the output is row i of the demo file, so row ranges mean the same rows in every demo stage.

    python -m examples.short_targets      # rewrites the JSON (tests/test_rl_demo.py checks it is current)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SOURCE = DATA / "medical_o1_demo.json"
OUTPUT = DATA / "medical_o1_demo_short.json"
MIN_SENTENCES, MAX_SENTENCES, ENOUGH_WORDS = 2, 4, 40
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def short_chain_of_thought(text: str) -> str:
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        kept.append(sentence)
        words = sum(len(s.split()) for s in kept)
        if len(kept) >= MAX_SENTENCES or (len(kept) >= MIN_SENTENCES and words >= ENOUGH_WORDS):
            break
    return " ".join(kept)


def short_targets(rows: list[dict]) -> list[dict]:
    return [
        {
            "Question": row["Question"],
            "Complex_CoT": short_chain_of_thought(row["Complex_CoT"]),
            "Response": row["Ground-True Answer"].strip(),
        }
        for row in rows
    ]


def render(rows: list[dict]) -> str:
    return json.dumps(short_targets(rows), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
    OUTPUT.write_text(render(json.loads(SOURCE.read_text(encoding="utf-8"))), encoding="utf-8")
    print(OUTPUT)


if __name__ == "__main__":
    main()
