"""Benchmarks read and checked, each response scored (format, reward, correctness; the paper's scorer beside the
strict one), summaries per benchmark and the paired comparison of a model with its baseline."""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medo1.data.final_response import parse_response
from medo1.data.sources import (
    DataError,
    LoadResult,
    MCQItem,
    VerifiableProblem,
    iter_records,
    json_sets,
    load_examples,
    split_set,
)
from medo1.eval.config import EvalConfig, EvalError
from medo1.eval.extraction import extract_answer
from medo1.eval.generators import Generation, Generator
from medo1.eval.prompts import build_messages, reference_of
from medo1.eval.published import (
    PAPER_SETS,
    TABLE1_COLUMNS,
    TABLE2_COLUMNS,
    HuatuoAnswer,
    HuatuoScore,
    PaperSet,
    huatuo_answers,
    huatuo_set_score,
    normalise_question,
    paper_average,
    paper_set,
    postprocess,
)
from medo1.eval.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    PairedDifference,
    beyond_noise,
    noise_band,
    paired_bootstrap,
    wilson_interval,
)

INVALID_ROWS_SHOWN = 5


log = logging.getLogger(__name__)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def benchmark_sources(benchmarks: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """Benchmark name -> (source, set): a JSON file of named sets given whole (no `#SET`) becomes one benchmark per
    set, each named by its set (the published eval_data.json: MedQA_USLME_test, ..., GPQA_Medical_test)."""
    sources: dict[str, tuple[str, str | None]] = {}
    for name, text in benchmarks.items():
        path, key = split_set(text)
        sets = json_sets(path) if key is None else None
        if not sets:
            expanded = {name: (path, key)}
        else:
            expanded = {set_name: (path, set_name) for set_name in sets}
            log.info(
                "benchmark %r (%s): %d sets: %s",
                name,
                path,
                len(sets),
                ", ".join(f"{set_name} ({rows} rows)" for set_name, rows in sets.items()),
            )
        for new_name, source in expanded.items():
            if new_name in sources:
                raise EvalError(f"benchmarks: {new_name!r} named twice ({benchmarks[name]} and an earlier benchmark)")
            sources[new_name] = source
    return sources


def load_benchmark(config: EvalConfig, path: str, key: str | None = None) -> LoadResult:
    """The benchmark's rows from `start_row` on, at most `limit` of them."""
    end = None if config.limit is None else config.start_row + config.limit
    result = load_examples(path, config.format, None, config.fields, limit=end, key=key)
    if config.start_row == 0:
        return result
    if result.rows <= config.start_row:
        raise EvalError(f"benchmark {result.path}: start_row {config.start_row} but it has {result.rows} row(s)")
    return replace(
        result,
        rows=result.rows - config.start_row,
        examples=[(row, ex) for row, ex in result.examples if row >= config.start_row],
        problems=[p for p in result.problems if p.row >= config.start_row],
        duplicates=[(row, first) for row, first in result.duplicates if row >= config.start_row],
    )


def check_rows(name: str, result: LoadResult, format: str) -> None:
    """Log a benchmark's invalid rows (how many, the first few); EvalError when none is valid."""
    if not result.problems and result.examples:
        return
    if not result.examples:
        first = f"; first: {result.problems[0]}" if result.problems else ""
        what = "a valid MCQ item" if format == "mcq" else "a valid verifiable problem"
        raise EvalError(f"benchmark {name!r} ({result.path}): none of its {result.rows} row(s) is {what}{first}")
    log.warning(
        "benchmark %r (%s): %d of %d row(s) invalid, skipped (all listed in report.json)",
        name,
        result.path,
        len(result.problems),
        result.rows,
    )
    for problem in result.problems[:INVALID_ROWS_SHOWN]:
        log.warning("  %s", problem)
    if len(result.problems) > INVALID_ROWS_SHOWN:
        log.warning("  ... and %d more", len(result.problems) - INVALID_ROWS_SHOWN)


def replace_outputs(out_dir: Path, contents: dict[str, str]) -> None:
    """Write every file aside first, then rename them all into place: a failure leaves the old set whole."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, text in contents.items():
        aside = out_dir / f".{name}.tmp-{os.getpid()}"
        aside.write_text(text, encoding="utf-8")
        staged.append((aside, out_dir / name))
    for aside, final in staged:
        os.replace(aside, final)


@dataclass
class Benchmark:
    """One benchmark's valid rows, which earlier row each repeated question copies (its unit), and its notes."""

    name: str
    loaded: LoadResult
    items: list[tuple[int, MCQItem | VerifiableProblem]]
    unit_of: dict[int, int]
    """Row -> the first row of the same question: the unit every interval counts once."""
    notes: list[str]

    @classmethod
    def of(cls, name: str, loaded: LoadResult, config: EvalConfig) -> Benchmark:
        items: list[tuple[int, MCQItem | VerifiableProblem]] = list(loaded.examples)  # type: ignore[arg-type]
        first = dict(loaded.duplicates)
        benchmark = cls(name, loaded, items, {row: first.get(row, row) for row, _ in items}, [])
        benchmark.notes = benchmark._notes(config)
        return benchmark

    @property
    def is_mcq(self) -> bool:
        return self.loaded.format == "mcq"

    @property
    def copies(self) -> str | None:
        """How the rows repeat questions ("78 unique x 5"), or None when every question is asked once."""
        counts = Counter(self.unit_of.values())
        if len(counts) == len(self.unit_of):
            return None
        if len(set(counts.values())) == 1:
            return f"{len(counts)} unique x {next(iter(counts.values()))}"
        return f"{len(self.unit_of)} rows, {len(counts)} unique questions"

    def _notes(self, config: EvalConfig) -> list[str]:
        notes = []
        published = paper_set(self.name)
        if published is not None:
            notes.append(published.note)
        if self.copies:
            notes.append(f"{self.copies}: intervals count each unique question once")
            if config.temperature == 0:
                notes.append(
                    "greedy decoding answers every copy of a question alike: the copies are one run, not "
                    "several (the paper sampled 5 runs at temperature 0.5; set temperature > 0)"
                )
        return notes


def _mcq_record(generation: Generation, item: MCQItem) -> dict[str, Any]:
    """Both scorers' reading of an MCQ response: medo1's strict extraction and the published one."""
    extracted = extract_answer(generation.text, item.options)
    empty = not postprocess(generation.text)  # the published evaluation leaves empty responses out
    answer = None if empty else huatuo_answers(generation.text, item.options)
    return {
        "extracted": extracted,
        "strict_correct": extracted == item.answer_idx,
        "huatuo_first": answer and answer.first,
        "huatuo_last": answer and answer.last,
        "huatuo_kind": answer and answer.kind,
    }


def score_responses(
    generator: Generator, reward: Any, benchmark: Benchmark, config: EvalConfig, label: str, seed: int
) -> list[dict[str, Any]]:
    """One model's responses to one benchmark under one seed, each scored: the per-response records (MCQ:
    `correct` is set by `apply_scorer` once all of a model's responses to the benchmark are in)."""
    items = benchmark.items
    generations = generator.generate(
        [build_messages(item, config.system_prompt, config.prompt) for _, item in items],
        samples=config.samples_per_prompt,
        seed=seed,
    )
    flat = [(row, item, sample, g) for (row, item), gens in zip(items, generations) for sample, g in enumerate(gens)]
    rewards = reward([g.text for *_, g in flat], [reference_of(item) for _, item, _, _ in flat])
    records = []
    for (row, item, sample, generation), value, judged_correct in zip(flat, rewards.rewards, rewards.correct):
        format_ok = parse_response(generation.text).format_ok
        record: dict[str, Any] = {"row": row, "seed": seed, "sample": sample, "reference": reference_of(item)}
        if isinstance(item, MCQItem):
            record |= _mcq_record(generation, item)
        else:
            record |= {"extracted": None, "correct": bool(judged_correct)}
        record |= {
            "format_ok": format_ok,
            "reward": value,
            "tokens": generation.tokens,
            "hit_cap": generation.hit_cap,
            "response": generation.text,
        }
        records.append(record)
    log.info(
        "eval: %s on %s, seed %d: mean reward %.3f",
        label,
        benchmark.name,
        seed,
        sum(rewards.rewards) / max(1, len(rewards.rewards)),
    )
    return records


def huatuo_score(records: list[dict[str, Any]]) -> HuatuoScore:
    """The published score of a set of MCQ responses (the better of every first-found and every last-found)."""
    return huatuo_set_score(
        (
            None if r["huatuo_first"] is None else HuatuoAnswer(r["huatuo_first"], r["huatuo_last"], r["huatuo_kind"]),
            r["reference"],
        )
        for r in records
    )


def apply_scorer(benchmark: Benchmark, records: list[dict[str, Any]], scorer: str) -> None:
    """Set each MCQ record's `correct` by the headline scorer: medo1's strict reading, or the published one (the
    set's pick of first- or last-found; an empty response counts as wrong here, and is left out of its score)."""
    if not benchmark.is_mcq:
        return
    pick = huatuo_score(records).pick if scorer == "huatuo" else None
    for record in records:
        if scorer == "medo1":
            record["correct"] = record["strict_correct"]
        else:
            record["correct"] = (
                pick is not None and (record[f"huatuo_{pick}"] or "").lower() == record["reference"].lower()
            )


def unit_means(records: list[dict[str, Any]], unit_of: dict[int, int], key: str) -> dict[int, float]:
    """Per question (unit), the mean of `key` over its responses (its copies, samples and seeds)."""
    sums: dict[int, list[float]] = {}
    for record in records:
        sums.setdefault(unit_of[record["row"]], []).append(float(record[key]))
    return {unit: sum(values) / len(values) for unit, values in sums.items()}


def summarise(benchmark: Benchmark, records: list[dict[str, Any]], scorer: str) -> dict[str, Any]:
    """One model's scores on one benchmark from its response records."""
    n_responses = len(records)
    units = len(set(benchmark.unit_of.values()))
    format_ok = sum(r["format_ok"] for r in records)
    well_formed_correct = sum(r["correct"] for r in records if r["format_ok"])
    lengths = [r["tokens"] for r in records if r["tokens"] is not None]
    capped = [r["hit_cap"] for r in records if r["hit_cap"] is not None]
    unit_accuracy = unit_means(records, benchmark.unit_of, "correct")
    items = dict(benchmark.items)
    result: dict[str, Any] = {
        "path": benchmark.loaded.path,
        "format": benchmark.loaded.format,
        "n": len(benchmark.items),
        "unique_questions": units,
        "copies": benchmark.copies,
        "responses": n_responses,
    }
    if benchmark.is_mcq:
        published = huatuo_score(records)
        strict = sum(r["strict_correct"] for r in records)
        headline = published.accuracy if scorer == "huatuo" else strict / n_responses
        result |= {
            "scorer": scorer,
            "correct": sum(r["correct"] for r in records),
            "accuracy": headline if headline is not None else 0.0,
            "strict_accuracy": strict / n_responses,
            "unparseable": sum(r["extracted"] is None for r in records),
            "huatuo": {
                "accuracy": published.accuracy,
                "first_accuracy": published.first_accuracy,
                "last_accuracy": published.last_accuracy,
                "pick": published.pick,
                "scored": published.scored,
                "dropped_empty": published.dropped_empty,
            },
            "chance": sum(1 / len(items[row].options) for row in benchmark.unit_of) / len(benchmark.unit_of),  # type: ignore[union-attr]
        }
    else:
        correct = sum(r["correct"] for r in records)
        result |= {
            "scorer": "reward",
            "correct": correct,
            "accuracy": correct / n_responses,
            "chance": None,
            # No final answer to read: the response is out of the format.
            "unparseable": n_responses - format_ok,
        }
    result |= {
        # Intervals count each unique question once (`medo1.eval.stats`).
        "accuracy_ci95": list(wilson_interval(sum(unit_accuracy.values()), units)),
        "format_ok": format_ok,
        "format_ok_rate": format_ok / n_responses,
        "correct_among_well_formed": well_formed_correct / format_ok if format_ok else None,
        "mean_response_tokens": sum(lengths) / len(lengths) if lengths else None,
        "hit_token_cap": sum(capped) if capped else None,
        "reward_mean": sum(r["reward"] for r in records) / n_responses,
        "notes": benchmark.notes,
        "invalid_rows": [p.to_dict() for p in benchmark.loaded.problems],
    }
    return result


def load_subjects(benchmark: Benchmark, published: PaperSet, source: str | None) -> tuple[dict[int, str], str]:
    """Row -> subject (MMLU-Pro `category`, GPQA `Subdomain`) for a published set the paper splits, from the rows'
    own field or else from `source` (the original dataset, matched by question text); and a note on the match."""
    field = published.subject_field
    assert field is not None and published.question_field is not None
    raw = benchmark.loaded.raw
    own = {
        row: raw[row][field]
        for row, _ in benchmark.items
        if isinstance(raw.get(row), dict) and isinstance(raw[row].get(field), str)
    }
    if len(own) == len(benchmark.items):
        return own, f"{benchmark.name}: subjects from its rows' own `{field}`"
    if source is None:
        return {}, (
            f"{benchmark.name} cannot be split into {' / '.join(c for c, _ in published.split)}: its rows carry "
            f"no `{field}`; set subjects.{published.key}=<the original dataset> (a file or hf://...)"
        )
    path, key = split_set(source)
    by_question: dict[str, str] = {}
    try:
        for _, _, record, _ in iter_records(path, key):
            if isinstance(record, dict):
                question, subject = record.get(published.question_field), record.get(field)
                if isinstance(question, str) and isinstance(subject, str):
                    by_question.setdefault(normalise_question(question), subject)
    except DataError as exc:
        raise EvalError(f"subjects.{published.key}: {exc}") from None
    subjects = {
        row: by_question[q] for row, item in benchmark.items if (q := normalise_question(item.question)) in by_question
    }
    wanted = {value for _, value in published.split}
    others = sum(subject not in wanted for subject in subjects.values())
    note = (
        f"{benchmark.name}: {len(subjects)} of {len(benchmark.items)} rows matched a `{field}` in {source}"
        + (f"; {len(benchmark.items) - len(subjects)} unmatched" if len(subjects) < len(benchmark.items) else "")
        + (f"; {others} of another {field}" if others else "")
        + (", left out of the split columns" if len(subjects) < len(benchmark.items) or others else "")
    )
    if not by_question:
        raise EvalError(
            f"subjects.{published.key}: {source} has no rows with `{published.question_field}` and `{field}`"
        )
    return subjects, note


def _set_score(records: list[dict[str, Any]], scorer: str) -> float | None:
    """A column's score in percent: the published score, or medo1's strict accuracy."""
    if not records:
        return None
    if scorer == "huatuo":
        accuracy = huatuo_score(records).accuracy
        return None if accuracy is None else 100 * accuracy
    return 100 * sum(r["strict_correct"] for r in records) / len(records)


def paper_tables(
    benchmarks: dict[str, Benchmark],
    records: dict[str, dict[str, list[dict[str, Any]]]],
    subjects: dict[str, dict[int, str]],
    scorer: str,
) -> dict[str, Any]:
    """Each model's cells in the paper's Table 1 layout (with its Avg) and Table 2 layout, and why any is missing.
    A split column is scored as a set of its own (the published scorer's first/last pick per column)."""
    by_set = {published.key: name for name in benchmarks if (published := paper_set(name)) is not None}
    models: dict[str, Any] = {}
    missing: list[str] = []
    for label, by_name in records.items():
        table1: dict[str, float | None] = dict.fromkeys(TABLE1_COLUMNS)
        table2: dict[str, float | None] = dict.fromkeys(TABLE2_COLUMNS)
        for published in PAPER_SETS:
            name = by_set.get(published.key)
            if name is None:
                continue
            rows = by_name[name]
            table2[published.column] = _set_score(rows, scorer)
            if not published.split:
                table1[published.column] = table2[published.column]
            elif name in subjects:
                for column, value in published.split:
                    table1[column] = _set_score([r for r in rows if subjects[name].get(r["row"]) == value], scorer)
        models[label] = {
            "table1": table1,
            "average": paper_average([table1[c] for c in TABLE1_COLUMNS]),
            "table2": table2,
        }
    for published in PAPER_SETS:
        if published.key not in by_set:
            missing.append(
                f"{published.key} not evaluated: {' / '.join(c for c, _ in published.split) or published.column} "
                f"n/a (give the published file, or {published.aliases[0]}=FILE)"
            )
    return {
        "scorer": scorer,
        "table1_columns": list(TABLE1_COLUMNS),
        "table2_columns": list(TABLE2_COLUMNS),
        "models": models,
        "notes": missing,
    }


PAIRED_METRICS = {"reward": "reward", "format_ok": "format_ok", "correct": "correct"}
"""Report key -> response-record key of the per-question values compared between models."""


def _paired(benchmark: Benchmark, model: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for name, key in PAIRED_METRICS.items():
        a, b = unit_means(model, benchmark.unit_of, key), unit_means(baseline, benchmark.unit_of, key)
        units = sorted(b)
        out[name] = paired_bootstrap([a[u] for u in units], [b[u] for u in units]).to_dict()
    return out


def compare_to_baseline(
    benchmarks: dict[str, Benchmark],
    records: dict[str, dict[str, list[dict[str, Any]]]],
    noise: dict[int, dict[str, list[dict[str, Any]]]],
    baseline: str,
    first_seed: int,
) -> dict[str, Any]:
    """Every model against `baseline`, question by question, and the baseline's seed-to-seed noise.

    `records`: label -> benchmark -> response records (all seeds); `noise`: noise seed -> benchmark -> the
    baseline's records under that seed, compared with its records under `first_seed`.
    """
    result: dict[str, Any] = {
        "baseline": baseline,
        "method": f"paired percentile bootstrap over unique questions, {BOOTSTRAP_RESAMPLES} resamples, "
        f"generator seed {BOOTSTRAP_SEED}; a question's value is the mean over its responses",
        "benchmarks": {},
    }
    for name, benchmark in benchmarks.items():
        base = records[baseline][name]
        first_run = [r for r in base if r["seed"] == first_seed]
        seed_to_seed = [{"seed": seed, **_paired(benchmark, runs[name], first_run)} for seed, runs in noise.items()]
        band = {
            metric: noise_band(
                [
                    PairedDifference(d[metric]["difference"], *d[metric]["ci95"], d[metric]["questions"])
                    for d in seed_to_seed
                ]
            )
            for metric in PAIRED_METRICS
        }
        models = {}
        for label, runs in records.items():
            if label == baseline:
                continue
            gains = _paired(benchmark, runs[name], base)
            for metric, gain in gains.items():
                low, high = gain["ci95"]
                gain["beyond_noise"] = beyond_noise(
                    PairedDifference(gain["difference"], low, high, gain["questions"]), band[metric]
                )
            models[label] = gains
        result["benchmarks"][name] = {"models": models, "noise": seed_to_seed, "noise_band": band}
    return result
