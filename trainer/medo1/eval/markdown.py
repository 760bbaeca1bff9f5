"""report.md: the per-benchmark table, the comparison with the baseline and its verdict, and the paper's tables."""

from __future__ import annotations

from typing import Any

from medo1.eval.published import paper_cell
from medo1.eval.scoring import percent


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _difference_cell(d: dict[str, Any]) -> str:
    low, high = d["ci95"]
    return f"{_signed(d['difference'])} ({_signed(low)} to {_signed(high)})"


def _verdict(gains: dict[str, Any]) -> str:
    """What the reward difference shows: a gain (or loss) beyond the seed-to-seed noise, or not."""
    reward = gains["reward"]
    direction = "gain" if reward["difference"] > 0 else "loss"
    if reward["beyond_noise"] is True:
        return f"{direction} beyond the noise"
    if reward["beyond_noise"] is False and reward["excludes_zero"]:
        return f"{direction}: interval excludes 0, within the seed-to-seed noise"
    if reward["excludes_zero"]:
        return f"{direction}: interval excludes 0 (no seed-to-seed runs)"
    return "not distinguishable from 0"


def _paper_markdown(report: dict[str, Any]) -> list[str]:
    tables = report["paper_table"]
    scorer = (
        "the published HuatuoGPT-o1 scorer (`huatuo`: the better of first- and last-found answers per column, "
        "empty answers left out)"
        if tables["scorer"] == "huatuo"
        else "medo1's strict scorer (`medo1`: one extracted answer, an unparsed one wrong)"
    )
    columns1, columns2 = tables["table1_columns"], tables["table2_columns"]
    lines = [
        "## The paper's Table 1 layout",
        "",
        f"Scored by {scorer}; percent, one decimal. Avg: the plain mean of the seven columns (n/a unless all seven "
        "are scored).",
        "",
        "| model | " + " | ".join(columns1) + " | Avg |",
        "|---|" + "---:|" * (len(columns1) + 1),
    ]
    for label, model in tables["models"].items():
        cells = [paper_cell(model["table1"][c]) for c in columns1]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {paper_cell(model['average'])} |")
    lines += [
        "",
        "Table 2 layout (MMLU-Pro and GPQA each over all their questions):",
        "",
        "| model | " + " | ".join(columns2) + " |",
        "|---|" + "---:|" * len(columns2),
    ]
    for label, model in tables["models"].items():
        lines.append(f"| {label} | " + " | ".join(paper_cell(model["table2"][c]) for c in columns2) + " |")
    notes = tables["notes"]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return lines + [""]


def report_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"# Evaluation: {report['model']}", ""]
    if report.get("paper_table"):
        lines += _paper_markdown(report)
    mcq_any = any(result["format"] == "mcq" for result in report["benchmarks"].values())
    scorer = settings["scorer"] if mcq_any else "reward"
    lines += [
        f"| benchmark | n | unique | accuracy % ({scorer}) | strict % (medo1) | unparseable |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["benchmarks"].items():
        strict = percent(result.get("strict_accuracy"))
        lines.append(
            f"| {name} | {result['n']} | {result['unique_questions']} | {percent(result['accuracy'])} | {strict} "
            f"| {result['unparseable']} |"
        )
    lines += ["", f"Average accuracy over these benchmarks: {percent(report['average_accuracy'])}%"]
    invalid = sum(len(r["invalid_rows"]) for r in report["benchmarks"].values())
    if invalid:
        lines.append(f"Invalid rows skipped: {invalid} (listed in report.json).")
    decoding = (
        "greedy decoding"
        if settings["temperature"] == 0
        else f"temperature {settings['temperature']}, top-p {settings['top_p']}, "
        f"{settings['samples_per_prompt']} sample(s) per question under seed(s) "
        f"{', '.join(map(str, settings['seeds']))}"
    )
    protocol = f"preset {settings['preset']}; " if settings["preset"] else ""
    lines += [
        "",
        f"Decoding: {protocol}{decoding}; at most {settings['max_new_tokens']} new tokens; "
        f"prompt {settings['prompt']}; engine {settings['engine']}.",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    for name, result in report["benchmarks"].items():
        lines += [f"- {name}: {note}" for note in result["notes"] if not note.startswith(name)]
    for name in report["benchmarks"]:
        mcq = report["benchmarks"][name]["format"] == "mcq"
        correct_header = "MCQ accuracy % (95% CI) | chance %" if mcq else "correct % (95% CI)"
        lines += [
            "",
            f"## {name}: the same questions to each model",
            "",
            f"| model | format ok | mean response tokens | hit token cap | mean {report['reward']} | {correct_header} "
            "| correct among well-formed % |",
            "|---|---:|---:|---:|---:|---:|" + ("---:|" if mcq else "") + "---:|",
        ]
        for label, benchmarks in report["comparison"].items():
            r = benchmarks[name]
            tokens = "n/a" if r["mean_response_tokens"] is None else f"{r['mean_response_tokens']:.0f}"
            capped = "n/a" if r["hit_token_cap"] is None else f"{r['hit_token_cap']}/{r['responses']}"
            low, high = r["accuracy_ci95"]
            correct = f"{percent(r['accuracy'])} ({percent(low)}-{percent(high)})" + (
                f" | {percent(r['chance'])}" if mcq else ""
            )
            lines.append(
                f"| {label} | {r['format_ok']}/{r['responses']} | {tokens} | {capped} | {r['reward_mean']:.3f} "
                f"| {correct} | {percent(r['correct_among_well_formed'])} |"
            )
        paired = report.get("paired")
        if paired:
            p = paired["benchmarks"][name]
            lines += [
                "",
                f"Against {paired['baseline']}, question by question (95% intervals: {paired['method']}):",
                "",
                f"| model | {report['reward']} gain | format-ok rate gain | correct rate gain | reward verdict |",
                "|---|---:|---:|---:|---|",
            ]
            for label, gains in p["models"].items():
                lines.append(
                    f"| {label} | {_difference_cell(gains['reward'])} | {_difference_cell(gains['format_ok'])} "
                    f"| {_difference_cell(gains['correct'])} | {_verdict(gains)} |"
                )
            for run in p["noise"]:
                lines.append(
                    f"| {paired['baseline']}, seed {run['seed']} vs seed {settings['seeds'][0]} (noise) "
                    f"| {_difference_cell(run['reward'])} | {_difference_cell(run['format_ok'])} "
                    f"| {_difference_cell(run['correct'])} | seed-to-seed |"
                )
    lines += [
        "",
        "Format ok: `## Thinking` and `## Final Response` each exactly once, the RL reward's format rule. "
        "Hit token cap: responses cut off at the new-token limit. Correct among well-formed: of the responses in the "
        "format, the share with the right answer. Intervals count each unique question once.",
    ]
    if mcq_any:
        lines.append(
            "Accuracy: by the scorer named in the header; strict (medo1): one answer extracted per response, an "
            "unparseable one counted wrong; huatuo (published): some option always read, the better of every "
            "first-found and every last-found answer per set. Chance: the accuracy of guessing one option at random. A "
            "95% interval that contains chance means the model's answers are not distinguishable from guessing on "
            "these questions; a small model (the 135M demo model) is expected there: its training teaches the answer "
            "format and style, not medical knowledge."
        )
    if report.get("paired"):
        lines.append(
            "A gain is beyond the noise when its 95% interval excludes 0 and it is larger than the baseline's own "
            "difference between sampling seeds (the noise rows)."
        )
    return "\n".join(lines) + "\n"
