"""`report.html` for a run directory: plots of `metrics.jsonl`, the data report, any eval report, the config.

Written at the end of every training stage (rank 0) so a cluster without W&B still leaves pictures on
the PVC; `medo1 report RUN_DIR` rewrites it. One figure per question a user asks of a run; a figure
appears when the run logged one of its keys. The keys are the ones the stages write: SFT through
TRL's SFTTrainer and `medo1.training.metrics.JsonlMetrics` (loss, mean_token_accuracy, tokens_per_second, ...),
medo1's PPO (`rl/ppo.py`: reward_mean, format_ok_rate, kl summed over the response, ...), and TRL's
GRPO / RLOO trainers (reward, rewards/<reward function>/mean, kl per token, clip_ratio/region_mean, ...).

The PNGs are written to `RUN_DIR/report/` and embedded in the HTML as data URIs, so the one HTML file
can be copied off the cluster on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from medo1.atomic import atomic_write_bytes, atomic_write_text
from medo1.data.sources import json_error_text
from medo1.errors import Medo1Error

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
PLOTS_DIR = "report"


@dataclass(frozen=True)
class Series:
    key: str
    """Key in metrics.jsonl."""
    label: str
    """Legend text."""
    axis: str
    """Y-axis label (with unit) when this series is the first one the run logged."""
    scale: float = 1.0
    """Multiplier applied before plotting (100 for fractions shown as %)."""


@dataclass(frozen=True)
class FigureSpec:
    name: str
    """PNG file stem."""
    question: str
    """The question the figure answers: its title."""
    series: tuple[Series, ...]
    stages: tuple[str, ...] = ("sft", "ppo", "trl_rl")
    """The runs it applies to (see `run_stage`): keys differ in meaning between them (TRL logs the GRPO policy
    loss as `loss`; medo1's PPO sums KL over each response where TRL averages it over tokens)."""
    log_y: bool = False


PERCENT_OF_RESPONSES = "responses (%)"
FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "loss",
        "Is the model learning? (training loss)",
        (Series("loss", "cross-entropy on the trained (answer) tokens", "loss (cross-entropy, nats per token)"),),
        stages=("sft",),
    ),
    FigureSpec(
        "token_accuracy",
        "How often does it predict the next answer token?",
        (Series("mean_token_accuracy", "next-token accuracy on trained tokens", "next-token accuracy (%)", 100.0),),
    ),
    FigureSpec(
        "reward",
        "Is the reward rising?",
        (
            Series("reward_mean", "training rollouts (mean)", "reward per response (mean)"),
            Series("reward", "training rollouts (mean)", "reward per response (mean)"),
            Series("eval_reward_mean", "held-out problems (mean)", "reward per response (mean)"),
            Series("eval_reward", "held-out problems (mean)", "reward per response (mean)"),
        ),
    ),
    FigureSpec(
        "format_and_correctness",
        "Do responses follow the format, and are they right?",
        (
            Series("format_ok_rate", "in the ## Thinking / ## Final Response format", PERCENT_OF_RESPONSES, 100.0),
            Series(
                "rewards/format_ok/mean", "in the ## Thinking / ## Final Response format", PERCENT_OF_RESPONSES, 100.0
            ),
            Series("verifier_true_rate", "answer judged correct", PERCENT_OF_RESPONSES, 100.0),
            Series("rewards/verifier_true/mean", "answer judged correct", PERCENT_OF_RESPONSES, 100.0),
        ),
    ),
    FigureSpec(
        "kl",
        "How far has the policy moved from the reference model?",
        (Series("kl", "KL(policy || reference), summed over each response", "KL divergence (nats per response)"),),
        stages=("ppo",),
    ),
    FigureSpec(
        "kl",
        "How far has the policy moved from the reference model?",
        (Series("kl", "KL(policy || reference), mean over tokens", "KL divergence (nats per token)"),),
        stages=("trl_rl",),
    ),
    FigureSpec(
        "entropy",
        "Is the policy still exploring? (entropy of its token choices)",
        (Series("entropy", "mean entropy of generated tokens", "entropy (nats per token)"),),
    ),
    FigureSpec(
        "clip_fraction",
        "How often does PPO clipping limit the update?",
        (
            Series("clip_fraction", "policy ratio clipped", "tokens clipped (%)", 100.0),
            Series("clip_ratio/region_mean", "policy ratio clipped", "tokens clipped (%)", 100.0),
            Series("value_clip_fraction", "value prediction clipped", "tokens clipped (%)", 100.0),
        ),
    ),
    FigureSpec(
        "policy_loss",
        "What is the policy loss doing?",
        (
            Series(
                "policy_loss",
                "clipped surrogate loss (need not fall: advantages are normalised)",
                "policy loss (unitless)",
            ),
            Series(
                "loss", "clipped surrogate loss (need not fall: advantages are normalised)", "policy loss (unitless)"
            ),
        ),
        stages=("ppo", "trl_rl"),
    ),
    FigureSpec(
        "value_loss",
        "Is the value model learning to predict returns?",
        (Series("value_loss", "value loss", "value loss (reward units squared)"),),
    ),
    FigureSpec(
        "response_length",
        "How long are the responses?",
        (
            Series("response_length", "mean response length", "response length (tokens)"),
            Series("completions/mean_length", "mean response length", "response length (tokens)"),
        ),
    ),
    FigureSpec(
        "learning_rate",
        "What learning rate did each step use?",
        (Series("learning_rate", "learning rate (schedule incl. warm-up)", "learning rate (per step)"),),
    ),
    FigureSpec(
        "grad_norm",
        "Are the gradients stable?",
        (Series("grad_norm", "global gradient norm before clipping", "gradient L2 norm (log scale)"),),
        log_y=True,
    ),
    FigureSpec(
        "throughput",
        "How fast is it running?",
        (
            Series("tokens_per_second", "tokens processed in training (prompt + answer)", "tokens per second"),
            Series("generated_tokens_per_second", "generated (rollout) tokens per second", "tokens per second"),
        ),
    ),
)


def _points(metrics: list[dict], key: str, scale: float) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged `key` as a number (the end-of-run summary row has none)."""
    steps, values = [], []
    for row in metrics:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "step" in row:
            steps.append(row["step"])
            values.append(value * scale)
    return steps, values


X_LABELS = {
    "sft": "training step (optimizer update)",
    "ppo": "training step (one rollout batch and its PPO epochs)",
    "trl_rl": "training step (optimizer update)",
}


def run_stage(metrics: list[dict]) -> str:
    """ "ppo" (medo1's PPO logs reward_mean), "trl_rl" (TRL's GRPO / RLOO log reward), else "sft"."""
    logged = {key for row in metrics for key in row}
    return "ppo" if "reward_mean" in logged else "trl_rl" if "reward" in logged else "sft"


def build_figures(metrics: list[dict], max_grad_norm: float | None = None) -> list[tuple[FigureSpec, object]]:
    """One matplotlib figure per FigureSpec the run logged, in FIGURES order; `max_grad_norm` (the run's
    clipping threshold) is drawn on the gradient-norm figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stage = run_stage(metrics)
    built = []
    for spec in FIGURES:
        if stage not in spec.stages:
            continue
        plotted = [(s, *_points(metrics, s.key, s.scale)) for s in spec.series]
        plotted = [(s, steps, values) for s, steps, values in plotted if steps]
        if not plotted:
            continue
        figure = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
        ax = figure.add_subplot()
        for series, steps, values in plotted:
            ax.plot(
                steps,
                values,
                marker="o" if len(steps) <= 60 else None,
                markersize=3,
                label=series.label,
                gid=series.key,
            )
        if spec.name == "grad_norm" and max_grad_norm:
            ax.axhline(max_grad_norm, color="grey", linestyle="--", label=f"clipping threshold ({max_grad_norm:g})")
        ax.set_title(spec.question)
        ax.set_xlabel(X_LABELS[stage])
        ax.set_ylabel(plotted[0][0].axis)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        steps = {x for _, xs, _ in plotted for x in xs}
        if len(steps) == 1:  # a one-step run: a readable axis around its only point
            ax.set_xlim(min(steps) - 1, min(steps) + 1)
        if spec.log_y and all(v > 0 for _, _, values in plotted for v in values):
            ax.set_yscale("log")
        if spec.name == "learning_rate":  # from zero, so warm-up and decay read as fractions of the peak
            ax.set_ylim(0, 1.1 * max(max(values) for _, _, values in plotted) or 1.0)
            ax.yaxis.set_major_formatter(lambda value, _: f"{value:.1e}")
        if spec.series[0].scale == 100.0:
            ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        figure.legend(fontsize="small", loc="outside lower center", ncols=2)
        built.append((spec, figure))
    return built


def find_eval_reports(run_dir: Path) -> list[tuple[str, dict]]:
    """(relative path, report) for every `report.json` up to two folders below `run_dir` that holds an
    eval report (a `benchmarks` mapping), e.g. eval/report.json or eval/base/report.json."""
    found = []
    for pattern in ("*/report.json", "*/*/report.json"):
        for path in sorted(run_dir.glob(pattern)):
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
                log.warning("skipping eval report %s: %s", path, exc)
                continue
            benchmarks = report.get("benchmarks") if isinstance(report, dict) else None
            if isinstance(benchmarks, dict) and all(
                isinstance(b, dict) and isinstance(b.get("accuracy"), (int, float)) for b in benchmarks.values()
            ):
                found.append((str(path.relative_to(run_dir)), report))
    return found


def eval_figure(reports: list[tuple[str, dict]]):
    """Grouped bars: accuracy per benchmark, one bar per eval report (base vs trained when both exist)."""
    from matplotlib.figure import Figure

    benchmarks = sorted({name for _, report in reports for name in report["benchmarks"]})
    figure = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    width = 0.8 / len(reports)
    for i, (where, report) in enumerate(reports):
        xs = [b + i * width for b in range(len(benchmarks))]
        accuracy = [100.0 * report["benchmarks"].get(name, {}).get("accuracy", float("nan")) for name in benchmarks]
        bars = ax.bar(xs, accuracy, width, label=f"{report.get('model', '?')} ({where})")
        ax.bar_label(bars, fmt="%.1f", fontsize="small")
    ax.set_xticks([b + width * (len(reports) - 1) / 2 for b in range(len(benchmarks))], benchmarks)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (% of questions)")
    ax.set_xlabel("benchmark")
    ax.set_title("How accurate is the model on each benchmark?")
    figure.legend(fontsize="small", loc="outside lower center", ncols=2)
    return figure


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _table(rows: dict) -> str:
    def cell(value) -> str:
        return html.escape(json.dumps(value) if isinstance(value, (dict, list)) else str(value))

    return "<table>" + "".join(f"<tr><th>{cell(k)}</th><td>{cell(v)}</td></tr>" for k, v in rows.items()) + "</table>"


def _without_per_item(report: dict) -> dict:
    """The eval report without its per-question lists (thousands of rows on a real benchmark)."""
    trimmed = dict(report)
    trimmed["benchmarks"] = {
        name: {k: v for k, v in bench.items() if k != "per_item"} for name, bench in report["benchmarks"].items()
    }
    return trimmed


STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}img{max-width:100%}.warning{color:#a40;font-weight:bold}pre{background:#f8f8f8;padding:.8em;overflow:auto}"""


class ReportError(Medo1Error):
    """A run directory whose files cannot be reported on (missing, not UTF-8, not JSON, wrongly typed)."""


RUN_FILES = ("metrics.jsonl", "config.yaml", "data_report.json")


def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ReportError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); is it the run's own file?"
        ) from None


def load_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows; ReportError naming the line for one that is not a JSON object with an integer `step`
    and a numeric `time` (where present), as medo1's stages write them."""
    rows = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(
                f"{path} line {number}: not JSON (at column {exc.colno}: {json_error_text(exc)}); a line cut off "
                "by a kill is dropped when the run resumes, or delete it"
            ) from None
        if not isinstance(row, dict):
            raise ReportError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        for key, kinds in (("step", (int,)), ("time", (int, float))):
            value = row.get(key)
            if key in row and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ReportError(f"{path} line {number}: field '{key}': expected a number, got {json.dumps(value)}")
        rows.append(row)
    return rows


def _json_file(path: Path) -> dict:
    try:
        loaded = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not JSON (at line {exc.lineno} column {exc.colno}: {json_error_text(exc)})"
        ) from None
    if not isinstance(loaded, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    return loaded


def _max_grad_norm(path: Path, text: str) -> float | None:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReportError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    train = config.get("train") if isinstance(config, dict) else None
    value = train.get("max_grad_norm") if isinstance(train, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and RUN_DIR/report/*.png; returns the HTML path. ReportError (one line) for a
    missing run directory or a run file that cannot be read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    if not any((run_dir / name).is_file() for name in RUN_FILES) and not find_eval_reports(run_dir):
        raise ReportError(
            f"{run_dir}: not a medo1 run directory (no {', '.join(RUN_FILES)} and no eval report.json "
            "in a folder below it); give a training stage's output.dir"
        )
    metrics_path = run_dir / "metrics.jsonl"
    metrics = load_metrics(metrics_path) if metrics_path.is_file() else []
    plots_dir = run_dir / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    config = run_dir / "config.yaml"
    config_text = _text(config) if config.is_file() else None
    max_grad_norm = _max_grad_norm(config, config_text) if config_text else None
    figures = [(spec.name, spec.question, figure) for spec, figure in build_figures(metrics, max_grad_norm)]
    evals = find_eval_reports(run_dir)
    if evals:
        figures.append(("eval_accuracy", "How accurate is the model on each benchmark?", eval_figure(evals)))

    parts = [f"<h1>medo1 run report</h1><p>Run directory: <code>{html.escape(str(run_dir.resolve()))}</code></p>"]
    summary = next((row for row in reversed(metrics) if "train_runtime" in row), None)
    if summary:
        try:
            finished = datetime.fromtimestamp(summary.pop("time", 0), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (OverflowError, ValueError, OSError):  # a time no calendar holds
            finished = "unknown"
        parts.append("<h2>Summary</h2>" + _table({"finished": finished, **summary}))
    parts.append("<h2>Training curves</h2>")
    if not metrics:
        why = (
            "is empty: the run has logged no step yet"
            if metrics_path.is_file()
            else "is missing from this run directory"
        )
        log.warning("%s %s", metrics_path, why)
        parts.append(f"<p>metrics.jsonl {why}.</p>")
    ours = {f"{spec.name}.png" for spec in FIGURES} | {"eval_accuracy.png"}
    drawn = {f"{name}.png" for name, _, _ in figures}
    for stale in ours - drawn:  # from an earlier report of this directory; other files there are not ours
        (plots_dir / stale).unlink(missing_ok=True)
    for name, question, figure in figures:
        data = _png_bytes(figure)
        atomic_write_bytes(plots_dir / f"{name}.png", data)
        src = f"{PLOTS_DIR}/{name}.png"
        embedded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<h3>{html.escape(question)}</h3><a href="{src}"><img alt="{html.escape(question)}" '
            f'src="data:image/png;base64,{embedded}"></a>'
        )
    data_report = run_dir / "data_report.json"
    if data_report.is_file():
        data = _json_file(data_report)
        warnings = data.get("warnings") if isinstance(data.get("warnings"), list) else []
        parts.append(
            "<h2>Data</h2>"
            + "".join(f'<p class="warning">Warning: {html.escape(str(w))}</p>' for w in warnings)
            + _table(data)
        )
    for where, report in evals:
        parts.append(f"<h2>Evaluation: <code>{html.escape(where)}</code></h2>")
        parts.append(
            _table(
                {
                    name: {k: b.get(k) for k in ("n", "accuracy", "unparseable")}
                    for name, b in report["benchmarks"].items()
                }
            )
        )
        full = html.escape(json.dumps(_without_per_item(report), indent=2))
        parts.append(f"<details><summary>full report</summary><pre>{full}</pre></details>")
    if config_text is not None:
        parts.append(f"<h2>Config</h2><pre>{html.escape(config_text)}</pre>")

    title = f"medo1 report: {html.escape(run_dir.name)}"
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>'
        f"<body>{''.join(parts)}</body></html>\n"
    )
    out = run_dir / REPORT_HTML
    atomic_write_text(out, page)
    return out


def write_report_safely(run_dir: str | Path) -> Path | None:
    """`write_report` for the end of a training stage: a failure to plot is a warning, never a failed run."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 - the trained model matters more than its pictures
        log.warning("could not write the run report in %s: %s: %s", run_dir, type(exc).__name__, exc)
        return None
