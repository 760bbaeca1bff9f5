"""Evaluation: prompt, generate (local HF model or OpenAI-compatible endpoint), extract, score, compare.

Two kinds of benchmark (`format`): multiple choice (`mcq`: question, options, answer letter; one option letter is
extracted per response and scored, as described at `extract_answer`) and the RL stage's open-ended verifiable
problems (`verifiable`: the `Open-ended Verifiable Question` / `Ground-True Answer` rows, asked exactly as the RL
stage asks them). Every response of either kind is also scored the way the RL stage scores it: the
`## Thinking` / `## Final Response` format rule and the reward (`reward`: answer_match, verifier or judge, against
the correct option letter or the ground-truth answer), with its length in tokens and whether it hit the token cap.

Decoding is greedy by default; with `temperature` > 0 each model answers every question `samples_per_prompt`
times under each of `seeds` (the same seeds for every model). `compare_with` asks other models (the base model,
the SFT export) the same questions, and each model is compared with `baseline` question by question: the mean
gain in reward, format-ok rate and correctness with a paired bootstrap 95% interval, beside the seed-to-seed
noise of the baseline itself (`noise_seeds`). The statistics are in `medo1.eval.stats`.

The HuatuoGPT-o1 paper's evaluation (`preset: huatuo`, `medo1.eval.published`): its eval file read as published
(one benchmark per set), its prompt and decoding, its scorer reported beside medo1's strict one, and report.md in
the paper's table layouts. Local models generate with HF `generate` or, on a GPU, an offline vLLM engine (`engine`).

Invalid benchmark rows are reported, not fatal: they are counted in the report and the first few are logged; a
benchmark without a valid row stops the run before anything is generated. An endpoint is asked through
`medo1.chat_client` (retries, timeouts, progress). Outputs under `output_dir`: report.json, report.md,
responses.jsonl, all three written aside and renamed into place at the end, so a failed run leaves the previous
ones whole.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from medo1.eval.config import EvalConfig, EvalError
from medo1.eval.generators import Generator, make_generator, resolve_engine
from medo1.eval.markdown import report_markdown
from medo1.eval.published import HUATUO_PRESET, paper_set
from medo1.eval.scoring import (
    Benchmark,
    apply_scorer,
    benchmark_sources,
    check_rows,
    compare_to_baseline,
    load_benchmark,
    load_subjects,
    paper_tables,
    replace_outputs,
    score_responses,
    summarise,
)

log = logging.getLogger(__name__)


def _protocol_notes(config: EvalConfig) -> list[str]:
    """Where a run that names a published protocol departs from it."""
    if config.preset != "huatuo":
        return []
    changed = [
        f"{key} {getattr(config, key)} (published: {value})"
        for key, value in HUATUO_PRESET.items()
        if getattr(config, key) != value
    ]
    if not changed:
        return []
    note = "preset huatuo with these settings changed, so the numbers are not the published protocol's: " + ", ".join(
        changed
    )
    log.warning("eval: %s", note)
    return [note]


def run_eval(config: EvalConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Evaluate every benchmark with `model` and each `compare_with` model; write report.json, report.md and
    responses.jsonl; return the report (`benchmarks`: `model`'s results with its responses in `per_item`;
    `comparison`: every model's, without; `paired`: the paired comparison with the baseline, when there are
    several models; `paper_table` with `table: paper`)."""
    if not config.benchmarks:
        raise EvalError("no benchmarks to score: set benchmarks.NAME=PATH (medo1 eval --benchmark NAME=PATH)")
    out_dir = Path(config.output_dir)
    sources = benchmark_sources(config.benchmarks)
    loaded = {name: load_benchmark(config, path, key) for name, (path, key) in sources.items()}
    for name, result in loaded.items():
        check_rows(name, result, config.format)
    benchmarks = {name: Benchmark.of(name, result, config) for name, result in loaded.items()}
    for benchmark in benchmarks.values():
        if benchmark.copies and config.temperature == 0:
            log.warning(
                "benchmark %r: %s decoded greedily: its copies are one run repeated", benchmark.name, benchmark.copies
            )
    engine = resolve_engine(config) if config.model is not None or config.compare_with else "endpoint"
    notes = _protocol_notes(config)
    subjects: dict[str, dict[int, str]] = {}
    if config.table == "paper" and config.format == "mcq":
        for name, benchmark in benchmarks.items():
            published = paper_set(name)
            if published is not None and published.split:
                source = config.subjects.get(published.key, config.subjects.get(name))
                rows, note = load_subjects(benchmark, published, source)
                notes.append(note)
                if rows:
                    subjects[name] = rows
    from medo1.rl.rewards.factory import build_reward  # torch: only once the benchmarks are known to be usable

    reward = build_reward(config.reward)
    report: dict[str, Any] = {
        "model": config.model if config.model is not None else (config.endpoint_model or config.endpoint),
        "reward": reward.name,
        "settings": {
            key: getattr(config, key)
            for key in (
                "format",
                "preset",
                "prompt",
                "scorer",
                "temperature",
                "top_p",
                "samples_per_prompt",
                "seeds",
                "noise_seeds",
                "max_new_tokens",
            )
        }
        | {"engine": engine},
        "notes": notes,
        "benchmarks": {},
        "comparison": {},
    }
    baseline = config.baseline_label
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}
    noise: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for label, model in [*config.compare_with.items(), (config.label, None)]:
        log.info("eval: %s (%s)", label, model or report["model"])
        if model is not None:
            model_generator = make_generator(config, model)
        else:
            model_generator = generator if generator is not None else make_generator(config)
        records[label] = {name: [] for name in benchmarks}
        for seed in config.seeds:
            for name, benchmark in benchmarks.items():
                records[label][name] += score_responses(model_generator, reward, benchmark, config, label, seed)
        if label == baseline:
            for seed in config.noise_seeds:
                noise[seed] = {
                    name: score_responses(model_generator, reward, benchmark, config, f"{label} (noise)", seed)
                    for name, benchmark in benchmarks.items()
                }
        del model_generator  # one model in memory at a time
        for name, benchmark in benchmarks.items():
            apply_scorer(benchmark, records[label][name], config.scorer)
            for by_name in noise.values() if label == baseline else ():
                apply_scorer(benchmark, by_name[name], config.scorer)
        report["comparison"][label] = {
            name: summarise(benchmarks[name], records[label][name], config.scorer) for name in benchmarks
        }
    report["benchmarks"] = {
        name: report["comparison"][config.label][name] | {"per_item": records[config.label][name]}
        for name in benchmarks
    }
    for label in report["comparison"]:
        for result in report["comparison"][label].values():
            del result["invalid_rows"]
    if baseline is not None:
        report["paired"] = compare_to_baseline(benchmarks, records, noise, baseline, config.seeds[0])
    if config.table == "paper" and config.format == "mcq":
        report["paper_table"] = paper_tables(benchmarks, records, subjects, config.scorer)
    scored = [r["accuracy"] for r in report["benchmarks"].values()]
    report["average_accuracy"] = sum(scored) / len(scored)
    response_lines = [
        json.dumps({"model": label, "benchmark": name, **record}, ensure_ascii=False) + "\n"
        for label, by_name in records.items()
        for name, rows in by_name.items()
        for record in rows
    ] + [
        json.dumps({"model": f"{baseline} (noise seed {seed})", "benchmark": name, **record}, ensure_ascii=False) + "\n"
        for seed, by_name in noise.items()
        for name, rows in by_name.items()
        for record in rows
    ]
    replace_outputs(
        out_dir,
        {
            "responses.jsonl": "".join(response_lines),
            "report.json": json.dumps(report, indent=2, ensure_ascii=False) + "\n",
            "report.md": report_markdown(report),
        },
    )
    return report
