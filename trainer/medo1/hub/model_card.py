"""The model card (README.md) sent with an upload: `hub/templates/model_card.md` filled in from the recipe and
the eval report."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import yaml

from medo1.hub.config import UploadConfig, UploadError

CARD_TAGS = ["medical", "reasoning", "medo1"]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return str(text).replace("|", "\\|").replace("\n", " ")


def load_eval_report(path: str | Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UploadError(f"eval report {path} not found") from None
    except json.JSONDecodeError as exc:
        raise UploadError(f"eval report {path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), dict):
        raise UploadError(f"eval report {path} has no 'benchmarks' mapping")
    return report


def _format_accuracy(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{100 * value:.1f}%" if value <= 1 else f"{value:.1f}%"
    return _cell(value)


def eval_section(report: dict[str, Any] | None) -> str:
    if report is None:
        return "Not evaluated.\n"
    lines = ["| benchmark | n | accuracy | unparseable |", "|---|---|---|---|"]
    for name, row in report["benchmarks"].items():
        row = row or {}
        lines.append(
            f"| {_cell(name)} | {_cell(row.get('n', ''))} | {_format_accuracy(row.get('accuracy', ''))} "
            f"| {_cell(row.get('unparseable', ''))} |"
        )
    text = "\n".join(lines) + "\n"
    if report.get("average_accuracy") is not None:
        text += f"\nAverage accuracy: {_format_accuracy(report['average_accuracy'])}.\n"
    text += (
        "\nMultiple-choice accuracy with the answer taken from the `## Final Response` section; "
        "`unparseable` counts responses from which no option could be extracted.\n"
    )
    return text


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


CARD_TEMPLATE = "hub/templates/model_card.md"


def build_card(config: UploadConfig, report: dict[str, Any] | None) -> str:
    """The model card: `hub/templates/model_card.md` (package data) filled in with `string.Template`."""
    meta: dict[str, Any] = {"license": config.license}
    # A local directory as base model (tiny demo runs) is named in the text, never linked or put in
    # the metadata, where the Hub expects a repo id.
    base_on_hub = bool(config.base_model and HUB_ID.fullmatch(config.base_model))
    if base_on_hub:
        meta["base_model"] = config.base_model
    if config.datasets:
        meta["datasets"] = list(config.datasets)
    if config.language:
        meta["language"] = list(config.language)
    meta["tags"] = list(CARD_TAGS)
    meta["pipeline_tag"] = "text-generation"

    if base_on_hub:
        base = f"[{config.base_model}](https://huggingface.co/{config.base_model})"
    else:
        base = f"`{config.base_model}`" if config.base_model else "an unspecified base model"
    datasets = "\n".join(f"- [{d}](https://huggingface.co/datasets/{d})" for d in config.datasets)
    if config.hyperparameters:
        hp_rows = "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in config.hyperparameters.items())
        hyper = f"| hyperparameter | value |\n|---|---|\n{hp_rows}\n"
    else:
        hyper = "Not recorded.\n"
    template = Template(resources.files("medo1").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(
        front=yaml.safe_dump(meta, sort_keys=False, allow_unicode=True),
        name=config.repo_id.split("/")[-1],
        repo_id=config.repo_id,
        base=base,
        datasets=datasets or "- not specified",
        hyperparameters=hyper,
        evaluation=eval_section(report),
        license=config.license,
    )
