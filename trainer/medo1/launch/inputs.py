"""Before the first job of a chain starts: every stage's inputs are there. A chain whose RL stage names a
verifier no pod can load used to fail at RL's start-up, after hours of SFT.

For each enabled stage, its recipe and `set` are read into the stage's typed config (a bad value fails here
too), and each input it names is checked:
- a local path (data file, model folder, eval report): it exists. A path under a storage volume's mountPath
  (/data, /checkpoints, /hf-cache) that is not mounted where the check runs (a laptop running `medo1 launch
  chain` against a cluster) cannot be seen and is not checked (said once); the chart's run pod mounts them all.
- a Hub id (`owner/name`, a model; `hf://owner/name` data): in the Hugging Face cache the stage's pods use
  (HF_HOME: the hf-cache volume), or readable on the Hub (HF_ENDPOINT) with the token the stage's pods get
  (HF_TOKEN here when the chart gives the stage `secrets.hfToken`; the run pod gets it too).
- what an earlier stage of the chain writes (the SFT export the RL stage starts from, a translated data
  file) is not there yet and is not checked.
Every missing input is one line: the stage, the field, the path or id, and the fix. Nothing is created when
one is missing (`InputsMissing`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medo1.config import ConfigError, load_config, stage_config_class
from medo1.launch.waiting import LaunchError

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
HUB_TIMEOUT_S = 15.0
VOLUMES = ("data", "checkpoints", "hfCache")


class InputsMissing(LaunchError):
    """A stage's input is missing: nothing was created."""


@dataclass(frozen=True)
class Input:
    field: str
    value: str
    kind: str
    """model (a folder or a Hub id), data (a file or folder, or hf://owner/name), file, or model-dir (a local folder only)."""


@dataclass(frozen=True)
class Missing:
    stage: str
    field: str
    value: str
    problem: str
    fix: str

    def describe(self) -> str:
        return f"stage {self.stage}: {self.field} {self.value}: {self.problem}; fix: {self.fix}"


def stage_inputs(stage: str, config: Any) -> list[Input]:
    """What a stage reads, from its typed config."""
    found: list[Input] = []

    def add(field: str, value: Any, kind: str) -> None:
        if value:
            found.append(Input(field, str(value), kind))

    if stage in ("sft", "rl"):
        add("model.name_or_path", config.model.name_or_path, "model")
        add("model.tokenizer", config.model.tokenizer, "model")
        add("data.path", config.data.path, "data")
    if stage == "rl":
        if config.reward.kind == "verifier":
            add("reward.model", config.reward.model, "model")
            add("reward.tokenizer", config.reward.tokenizer, "model")
        if config.algo == "ppo":
            add("ppo.value_model", config.ppo.value_model, "model")
    if stage == "eval":
        add("model", config.model, "model")
        for label, model in config.compare_with.items():
            add(f"compare_with.{label}", model, "model")
        for name, path in config.benchmarks.items():
            add(f"benchmarks.{name}", path, "data")
        if getattr(config.reward, "kind", None) == "verifier":
            add("reward.model", config.reward.model, "model")
    if stage == "translate":
        add("input", config.input, "data")
    if stage == "upload":
        add("model_dir", config.model_dir, "model-dir")
        add("eval_report", config.eval_report, "file")
    return found


def stage_outputs(stage: str, config: Any) -> list[str]:
    """Where a stage writes what a later stage may read."""
    if stage in ("sft", "rl"):
        return [config.output.dir]
    if stage == "eval":
        return [config.output_dir]
    if stage == "translate":
        return [config.output]
    return []


def _under(path: str, folder: str) -> bool:
    path, folder = os.path.normpath(path), os.path.normpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class HubCheck:
    """Is a Hub repo in the HF cache, or readable on the Hub with a token? Asked once per (repo, token)."""

    def __init__(self, cache_dir: str | None = None, endpoint: str | None = None):
        home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
        self.cache_dir = Path(cache_dir or os.environ.get("HF_HUB_CACHE") or Path(home) / "hub")
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        self.answers: dict[tuple[str, str, str | None], tuple[str, str] | None] = {}

    def cached(self, repo_id: str, repo_type: str) -> bool:
        snapshots = self.cache_dir / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
        return snapshots.is_dir() and any(snapshots.iterdir())

    def problem(self, repo_id: str, repo_type: str, token: str | None) -> tuple[str, str] | None:
        """(problem, fix), or None when the repo is there."""
        key = (repo_id, repo_type, token)
        if key not in self.answers:
            self.answers[key] = None if self.cached(repo_id, repo_type) else self._ask(repo_id, repo_type, token)
        return self.answers[key]

    def _ask(self, repo_id: str, repo_type: str, token: str | None) -> tuple[str, str] | None:
        # HfApi.auth_check's request (huggingface_hub hf_api.py: GET /api/{type}s/{id}/auth-check: 404/401
        # RepoNotFound for a missing or unreadable repo, 403 GatedRepo for a gated one the token may not read),
        # with a timeout, which auth_check does not take.
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        where = f"not in the HF cache ({self.cache_dir})"
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return (
                f"{where}, and HF_HUB_OFFLINE is set",
                f"download it into the cache first "
                f"(HF_HOME={self.cache_dir.parent} huggingface-cli download {repo_id})",
            )
        who = "the stage's token" if token else "no token (the stage gets none: set secrets.hfToken)"
        try:
            response = get_session().get(
                f"{self.endpoint}/api/{repo_type}s/{repo_id}/auth-check",
                headers=build_hf_headers(token=token or False),
                timeout=HUB_TIMEOUT_S,
            )
            hf_raise_for_status(response)
        except GatedRepoError:
            return (
                f"{where}, and gated on {self.endpoint}: {who} has not been granted access",
                "accept its terms on the Hub with the account of the token in secrets.hfToken",
            )
        except RepositoryNotFoundError:
            return (
                f"{where}, and {self.endpoint} has no such {repo_type} readable with {who}",
                "check the id; a private repo needs a token that can read it (secrets.hfToken)",
            )
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            return (
                f"{where}, and {self.endpoint} answered {status} with {who}",
                "check the token in secrets.hfToken (a 401 means it was refused)",
            )
        except Exception as exc:  # noqa: BLE001 - a network failure of any kind: the Hub could not be asked
            return (
                f"{where}, and {self.endpoint} could not be reached ({type(exc).__name__})",
                f"let the pods reach the Hub, or fill the hf-cache volume beforehand (HF_HOME=<its mount> "
                f"huggingface-cli download {repo_id})",
            )
        return None


@dataclass
class StagePlan:
    """One stage of a chain as the check sees it."""

    stage: str
    recipe: str
    overrides: list[str]
    token: str | None = None
    """The HF token the stage's pods get (None: anonymous)."""


def load_stage(stage: str, recipe: str, overrides: list[str]) -> Any:
    from medo1.plan.stages import local_recipe

    try:
        return load_config(stage_config_class(stage), str(local_recipe(recipe)), overrides)
    except ConfigError as exc:
        raise InputsMissing(f"stage {stage}: {exc}") from None


def check_inputs(stages: Iterable[StagePlan], mounts: Iterable[str] = (), hub: HubCheck | None = None) -> None:
    """Raise InputsMissing listing every missing input of `stages` (in chain order), one line each. `mounts`:
    the volume mount paths the stages' pods have (a path under one not mounted here is not checked)."""
    hub = hub or HubCheck()
    unseen = sorted({m for m in mounts if not Path(m).exists()})
    written: list[tuple[str, str]] = []  # (folder, stage) earlier stages write
    missing: list[Missing] = []
    skipped: set[str] = set()
    for plan in stages:
        config = load_stage(plan.stage, plan.recipe, plan.overrides)
        for item in stage_inputs(plan.stage, config):
            producer = next((stage for folder, stage in written if _under(item.value, folder)), None)
            if producer:
                log.info(
                    "stage %s: %s %s comes from stage %s (not checked before it runs)",
                    plan.stage,
                    item.field,
                    item.value,
                    producer,
                )
                continue
            found = _check(plan, item, unseen, hub, skipped)
            if found is not None:
                missing.append(found)
        written += [(folder, plan.stage) for folder in stage_outputs(plan.stage, config)]
    for mount in sorted(skipped):
        log.warning("inputs under %s not checked: it is not mounted here (the chart's run pod checks them)", mount)
    if missing:
        raise InputsMissing("\n".join(m.describe() for m in missing))


def _check(plan: StagePlan, item: Input, unseen: list[str], hub: HubCheck, skipped: set[str]) -> Missing | None:
    value = item.value
    if item.kind == "data" and value.startswith("hf://"):
        from medo1.data.sources import DataError, parse_hub_source

        try:
            repo_id = parse_hub_source(value).repo_id
        except DataError as exc:
            return Missing(plan.stage, item.field, value, str(exc).split(": ", 1)[-1], "write it as hf://OWNER/NAME")
        found = hub.problem(repo_id, "dataset", plan.token)
        return Missing(plan.stage, item.field, value, *found) if found else None
    path = Path(value).expanduser()
    if path.exists():
        if item.kind in ("model", "model-dir") and not path.is_dir():
            return Missing(
                plan.stage,
                item.field,
                value,
                "a file, not a model folder",
                "point it at the folder holding config.json and the weights",
            )
        return None
    mount = next((m for m in unseen if _under(value, m)), None)
    if mount is not None:
        skipped.add(mount)
        return None
    if item.kind == "model" and HUB_ID.match(value) and not Path(value.split("/", 1)[0]).is_dir():
        found = hub.problem(value, "model", plan.token)
        return Missing(plan.stage, item.field, value, *found) if found else None
    fixes = {
        "model": "put the model folder there (the checkpoints volume), or name the model by its Hub id (owner/name) "
        "to load it through the HF cache",
        "model-dir": "point it at an export folder the chain writes or that exists",
        "data": "copy the file onto the data volume (a pod mounting it: kubectl cp FILE POD:/data/), or point the "
        "stage's data path at it (stages.<stage>.set / jobs.<stage>.set)",
        "file": "point it at a file that exists, or at one an earlier stage writes",
    }
    return Missing(plan.stage, item.field, value, "does not exist", fixes[item.kind])
