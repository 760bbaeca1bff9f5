"""Plain helpers more than one test file uses (shared fixtures are in tests/conftest.py): the namespace recorded ready
for the doctor, the RL test runs' overrides, a tiny verifier with a known verdict, and the job statuses the
PyTorchJob and TrainJob stand-ins play."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import REPO

# ---- the doctor: a namespace recorded ready for the h100-2nodes profile ----------------------------------------

READY = Path(__file__).parent / "fixtures" / "cluster" / "doctor" / "ready.yaml"
NS = "team-a"
LAUNCHER = f"system:serviceaccount:{NS}:medo1"
# What the launcher does with the trainjob backend (medo1.doctor.check_access), granted in the ready namespace.
LAUNCH_RIGHTS = {
    ("create", "trainer.kubeflow.org", "trainjobs"),
    ("get", "trainer.kubeflow.org", "trainjobs"),
    ("delete", "trainer.kubeflow.org", "trainjobs"),
    ("list", "", "pods"),
    ("get", "", "pods/log"),
    ("list", "", "events"),
    ("get", "trainer.kubeflow.org", "trainingruntimes"),
    ("get", "trainer.kubeflow.org", "clustertrainingruntimes"),
}


def ready_objects() -> list[dict]:
    return yaml.safe_load(READY.read_text())


def ready_permissions() -> dict[str, set]:
    return {"": set(LAUNCH_RIGHTS), LAUNCHER: set(LAUNCH_RIGHTS)}


def without(objects: list[dict], kind: str, name: str) -> list[dict]:
    kept = [o for o in objects if not (o["kind"] == kind and o["metadata"]["name"] == name)]
    assert len(kept) == len(objects) - 1
    return kept


# ---- RL runs on the toy task (the toy_policy and toy_problems fixtures) -----------------------------------------


def rl_overrides(policy, problems, out, algo="ppo", **extra) -> list[str]:
    values = {
        "algo": algo,
        "model.name_or_path": policy,
        "data.path": problems,
        "data.format": "verifiable",
        "reward.kind": "answer_match",
        "sampling.response_length": 24,
        "sampling.temperature": 0.7,
        "output.dir": out,
        "output.save_steps": 1000,
        "output.logging_steps": 1,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "train.lr_scheduler": "constant",
        "train.per_device_batch_size": 4,
        "train.gradient_accumulation_steps": 2,
        "train.total_episodes": 128,
        "ppo.kl_coef": 0.01,
        "ppo.ppo_epochs": 2,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


def as_cli(overrides: list[str]) -> list[str]:
    return ["rl", "--config", REPO / "recipes" / "rl-ppo-tiny-cpu.yaml", "--resume", "auto"] + [
        a for o in overrides for a in ("--set", o)
    ]


# ---- a tiny verifier (how its verdict is made known: tests/test_rewards.py's docstring) -------------------------


def save_verifier(
    out: Path,
    p_true: float,
    *,
    num_labels: int = 2,
    true_index: int = 1,
    label2id: dict[str, int] | None = None,
    eos_token: str | None = None,
    tokenizer_has_pad: bool = True,
    config_pad: bool | str = True,
) -> Path:
    # Imported here: the other helpers' users (the doctor and launcher tests) need neither torch nor transformers.
    import math

    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from medo1.models import bundled_qwen_tokenizer_dir, load_tokenizer

    tokenizer = load_tokenizer(bundled_qwen_tokenizer_dir())
    if eos_token is not None:
        tokenizer.eos_token = eos_token
    if not tokenizer_has_pad:
        tokenizer.pad_token = None
    labels = label2id or {"False": 0, "True": 1}
    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        num_labels=num_labels,
        label2id=labels,
        id2label={v: k for k, v in labels.items()},
        pad_token_id=(
            tokenizer.convert_tokens_to_ids(config_pad)
            if isinstance(config_pad, str)
            else tokenizer.pad_token_id
            if config_pad
            else None
        ),
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForSequenceClassification(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[tokenizer.eos_token_id] = 1.0
        model.score.weight.zero_()
        # Logits (0.7, 0.7 + log-odds): the softmax over both gives p, a sigmoid of one would not.
        model.score.weight[:, 0] = 0.7
        model.score.weight[true_index, 0] += math.log(p_true / (1 - p_true))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- PyTorchJob statuses, shaped as Training Operator v1.9 writes them -----------------------------------------


def pytorchjob_condition(kind, reason, message="", at="2026-11-23T10:00:00Z"):
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
        "lastUpdateTime": at,
    }


PYTORCHJOB_CREATED = {
    "status": {"conditions": [pytorchjob_condition("Created", "PyTorchJobCreated", "PyTorchJob medo1-sft is created.")]}
}
PYTORCHJOB_SUCCEEDED = {
    "status": {
        "conditions": [
            pytorchjob_condition("Created", "PyTorchJobCreated"),
            {**pytorchjob_condition("Running", "PyTorchJobRunning", at="2026-11-23T10:01:00Z"), "status": "False"},
            pytorchjob_condition(
                "Succeeded",
                "PyTorchJobSucceeded",
                "PyTorchJob medo1-sft is successfully completed.",
                "2026-11-23T11:00:00Z",
            ),
        ],
        "completionTime": "2026-11-23T11:00:00Z",
    }
}


# ---- TrainJob statuses, as Trainer v2.3 writes them (where from: tests/test_trainer_v2.py) ----------------------


def trainjob_condition(kind, reason, message, at, status="True"):
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def jobs_status(active=0, succeeded=0, failed=0):
    return [
        {"name": "node", "active": active, "ready": active, "succeeded": succeeded, "failed": failed, "suspended": 0}
    ]


TRAINJOB_CREATED = {}
TRAINJOB_SUCCEEDED = {
    "conditions": [
        trainjob_condition("Complete", "AllJobsCompleted", "jobset completed successfully", "2026-11-23T11:00:00Z")
    ],
    "jobsStatus": jobs_status(succeeded=1),
}


# The pipeline's doctor step as tests/test_doctor.py and tests/test_pipeline.py run it: the 2-node profile.
DOCTOR_STEP_ARGUMENTS = dict(
    backend="trainjob",
    profile="h100-2nodes",
    nodes=2,
    gpus_per_node=8,
    data_pvc="medo1-data",
    checkpoints_pvc="medo1-checkpoints",
    hf_cache_pvc="medo1-hf-cache",
    allow_unchecked=False,
)


def run_doctor_step(kubeconfig: Path, report_path: Path, monkeypatch, **arguments) -> tuple[str, str | Exception]:
    """The compiled pipeline's doctor step as its pod runs it, against the cluster `kubeconfig` names (with
    DOCTOR_STEP_ARGUMENTS, `arguments` over them): its Markdown report, and what it returned or raised."""
    from kfp import dsl

    from pipelines.medo1_pipeline import doctor

    # The kubernetes client reads $KUBECONFIG once, at import; this process imported it long ago.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    report = dsl.Markdown(uri=str(report_path))
    try:
        outcome: str | Exception = doctor.python_func(report=report, **(DOCTOR_STEP_ARGUMENTS | arguments))
    except RuntimeError as exc:
        outcome = exc
    return Path(report.path).read_text(), outcome
