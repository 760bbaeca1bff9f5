"""Sharded PPO on CPU: synced generation across ranks, FSDP / ZeRO-3 training and checkpoints, start-up checks.

The multi-process tests run real torch.distributed processes (gloo) under torchrun. The DeepSpeed
variants run where DeepSpeed is installed (the trainer image) and are skipped elsewhere.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_scheduler,
)

from medo1.config import load_config
from medo1.rl.config import RLConfig, RLTrainConfig, SamplingConfig
from medo1.rl.engines import HFEngine
from medo1.rl.ppo import load_policy
from medo1.rl.rollout import response_logprobs
from medo1.rl.sharding import (
    Placement,
    Ranks,
    build_placement,
    init_ranks,
    zero3_config,
)
from medo1.training import checkpoint
from medo1.training.metrics import read_metrics
from tests.conftest import GPU_VLLM_PIN, REPO, free_port, run_medo1

TRIGGER = "!"
SAMPLING = SamplingConfig(response_length=24, temperature=0.7, gather_weights_for_generation=False)
SEED = 1234
SHARDED = [
    "fsdp",
    pytest.param(
        "deepspeed_zero3",
        marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed"),
    ),
]


def torchrun(*module: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        *module,
    ]


# ---- generation: ranks that stop at very different lengths -------------------------------------


@pytest.fixture(scope="module")
def stopping_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny random model rewired to end its turn right after the token "!" and (almost) never elsewhere.

    "!" alone writes hidden dimension 0 (huge), nothing else writes it, and only the end-of-turn row of
    the (untied) output head reads it. A prompt ending in "!" stops after one token; other prompts
    sample near-uniformly over the vocabulary and run to the length limit.
    """
    from medo1.models import generation_config_for

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tied = AutoModelForCausalLM.from_pretrained(tiny_model)
    tied.config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(tied.config)
    model.load_state_dict(tied.state_dict(), strict=False)
    stop = generation_config_for(tokenizer).eos_token_id[0]
    trigger = tokenizer(TRIGGER, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        model.lm_head.weight.copy_(tied.model.embed_tokens.weight)
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = 0
        embeddings[trigger] = 0
        embeddings[trigger, 0] = 1e4
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0
            layer.mlp.down_proj.weight[0] = 0
        model.lm_head.weight[stop] = 0
        model.lm_head.weight[stop, 0] = 10.0
    out = tmp_path_factory.mktemp("models") / "stops-after-bang"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def rank_prompts(tokenizer, rank: int) -> dict[str, torch.Tensor]:
    """Rank 0: two prompts ending in the trigger (stop at once); rank 1: two that run to the limit."""
    texts = (
        [f"Case {rank}{TRIGGER}", f"A longer case {rank} here{TRIGGER}"]
        if rank == 0
        else [f"Case {rank}?", f"A longer case {rank} here?"]
    )
    tokenizer.padding_side = "left"
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def trained_policy(placement: Placement, model_dir: str):
    make_optimizer = functools.partial(torch.optim.AdamW, lr=1e-5)
    make_scheduler = functools.partial(get_scheduler, "constant")
    return placement.trained(
        load_policy(model_dir, SAMPLING.temperature, trainable=True), make_optimizer, make_scheduler
    )


def generate_on_ranks(model_dir: str, out_dir: str, distributed: str) -> None:
    """Worker (one per torchrun process): generate this rank's prompts with the policy sharded across ranks,
    once gathering weights per forward (synced_gpus) and once gathering them for the whole call."""
    ranks = init_ranks()
    train = RLTrainConfig(distributed=distributed, per_device_batch_size=2, gradient_accumulation_steps=1)
    placement = build_placement(train, ranks, 1, model_dir)
    assert placement.sharded
    policy = trained_policy(placement, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = {}
    for gather in (False, True):
        engine = HFEngine(
            policy, tokenizer, SAMPLING.model_copy(update={"gather_weights_for_generation": gather}), placement, ranks
        )
        assert engine.synced
        torch.manual_seed(SEED)
        results[gather] = tuple(engine.generate(rank_prompts(tokenizer, ranks.rank))[:2])
    torch.save(results, Path(out_dir) / f"rank{ranks.rank}.pt")


@pytest.mark.multiprocess
@pytest.mark.parametrize("distributed", SHARDED)
def test_synced_generation_with_ragged_stops_matches_a_single_process(stopping_model, tmp_path, distributed):
    done = run_medo1(
        ["generate_on_ranks", stopping_model, tmp_path, distributed],
        launcher=torchrun("tests.test_rl_sharded"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    tokenizer = AutoTokenizer.from_pretrained(stopping_model)
    alone = Placement(Ranks(0, 1, 0, torch.device("cpu")), RLTrainConfig(), 1)
    engine = HFEngine(trained_policy(alone, str(stopping_model)), tokenizer, SAMPLING, alone, alone.ranks)
    assert not engine.synced
    lengths = {}
    for rank in (0, 1):
        torch.manual_seed(SEED)
        expected_responses, expected_mask = engine.generate(rank_prompts(tokenizer, rank))[:2]
        sharded = torch.load(tmp_path / f"rank{rank}.pt")
        for gather in (False, True):
            responses, mask = sharded[gather]
            assert torch.equal(mask, expected_mask), (rank, gather)
            assert torch.equal(responses, expected_responses), (rank, gather)
        lengths[rank] = expected_mask.sum(dim=1).tolist()
    assert lengths == {0: [1, 1], 1: [SAMPLING.response_length] * 2}  # rank 0 stopped 23 steps before rank 1


# ---- the weights a colocated vLLM engine is sent after an update ---------------------------------


def weights_sent_after_an_update(model_dir: str, out_dir: str, distributed: str) -> None:
    """Worker: one optimizer step on the sharded policy, then the weights VLLMEngine._push_weights would load
    (`named_full_parameters`, gathered one at a time), next to the policy's own full state dict and this rank's
    shards."""
    ranks = init_ranks()
    train = RLTrainConfig(distributed=distributed, per_device_batch_size=2, gradient_accumulation_steps=1)
    placement = build_placement(train, ranks, 1, model_dir)
    assert placement.sharded
    make_optimizer = functools.partial(torch.optim.AdamW, lr=1e-2)
    policy = placement.trained(
        load_policy(model_dir, 0.7, trainable=True), make_optimizer, functools.partial(get_scheduler, "constant")
    )
    torch.manual_seed(ranks.rank)
    ids = torch.randint(0, 5000, (2, 12))
    sequence = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(12).expand(2, 12),
    }
    policy.train()
    logprobs, _ = response_logprobs(policy.module, sequence, 4, torch.ones(2, 8), 0.7)
    policy.backward(-logprobs.mean())
    policy.step()
    sent = {name: tensor.detach().to("cpu", copy=True) for name, tensor in policy.named_full_parameters()}
    shards = {}
    if distributed == "fsdp":
        shards = {name: param.detach().to_local().clone() for name, param in policy.model.named_parameters()}
    torch.save(
        {"sent": sent, "full": policy.full_state_dict(), "shards": shards}, Path(out_dir) / f"rank{ranks.rank}.pt"
    )


@pytest.mark.multiprocess
@pytest.mark.parametrize("distributed", SHARDED)
def test_weights_sent_to_vllm_after_an_update_equal_the_policy(tiny_model, tmp_path, distributed):
    done = run_medo1(
        ["weights_sent_after_an_update", tiny_model, tmp_path, distributed],
        launcher=torchrun("tests.test_rl_sharded"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    sent, full = ranks[0]["sent"], ranks[0]["full"]
    initial = load_file(Path(tiny_model) / "model.safetensors")
    # Hugging Face names, as vLLM's load_weights reads them (the tied head is the embedding).
    assert sorted(sent) == sorted(initial)
    assert set(full) - set(sent) == {"lm_head.weight"}  # the full state dict names the tied head too
    assert torch.equal(full["lm_head.weight"], sent["model.embed_tokens.weight"])
    for name, tensor in sent.items():
        assert tensor.dtype == full[name].dtype and torch.equal(tensor, full[name]), name
        assert torch.equal(tensor, ranks[1]["sent"][name]), name  # every rank's engine gets the same weights
    changed = [name for name in sent if not torch.equal(sent[name].float(), initial[name].float())]
    assert len(changed) == len(sent)  # the update moved every weight, and the engine gets the moved ones
    for rank, saved in enumerate(ranks):
        for name, shard in saved["shards"].items():  # fsdp: each rank's shard is its slice of what is sent
            pieces = torch.chunk(sent[name], 2, dim=0)
            expected = pieces[rank] if rank < len(pieces) else sent[name][:0]
            assert torch.equal(shard, expected), (rank, name)


# ---- PPO with the models sharded -------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharded-rl") / "problems.json"
    rows = [
        {"Open-ended Verifiable Question": f"Case {i}: benign? Reply yes or no.", "Ground-True Answer": "yes"}
        for i in range(16)
    ]
    path.write_text(json.dumps(rows))
    return path


def ppo_cli(policy: Path, problems: Path, out: Path, distributed: str, episodes: int) -> list:
    values = {
        "model.name_or_path": policy,
        "model.gradient_checkpointing": "true",
        "data.path": problems,
        "data.limit": "null",
        "reward.kind": "answer_match",
        "sampling.response_length": 16,
        "train.distributed": distributed,
        "train.total_episodes": episodes,
        "train.per_device_batch_size": 2,
        "train.gradient_accumulation_steps": 2,
        "train.eval_fraction": 0.0,
        "train.warmup_ratio": 0.0,
        "output.dir": out,
        "output.save_steps": 1,
        "output.keep": 2,
    }
    return ["rl", "--config", REPO / "recipes" / "rl-ppo-tiny-cpu.yaml", "--resume", "auto"] + [
        a for key, value in values.items() for a in ("--set", f"{key}={value}")
    ]


@pytest.mark.multiprocess
@pytest.mark.parametrize("distributed", SHARDED)
def test_sharded_ppo_on_two_processes_writes_complete_checkpoints_and_resumes(
    tiny_model, problems, tmp_path, distributed
):
    out = tmp_path / "run"
    # 2 ranks x 4 episodes per update: 16 episodes are 2 updates, each saved.
    done = run_medo1(ppo_cli(tiny_model, problems, out, distributed, 16), launcher=torchrun("medo1"))
    assert done.returncode == 0, done.stderr[-4000:]
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [1, 2]
    last = out / "checkpoint-2"
    assert json.loads((last / checkpoint.COMPLETE_MARKER).read_text())["world_size"] == 2
    assert (last / "rng-rank1.pt").is_file()
    optimizer_state = (
        ["policy-optimizer.pt", "value-optimizer.pt"] if distributed == "fsdp" else ["policy-zero", "value-zero"]
    )
    assert all((last / name).exists() for name in optimizer_state)
    policy = AutoModelForCausalLM.from_pretrained(last / "policy")
    assert policy.config.architectures == ["Qwen2ForCausalLM"]
    assert AutoModelForSequenceClassification.from_pretrained(last / "value").config.num_labels == 1
    exported = load_file(out / "export" / "model.safetensors")
    assert all(torch.equal(exported[k], v) for k, v in load_file(last / "policy" / "model.safetensors").items())
    assert [m["episodes"] for m in read_metrics(out / "metrics.jsonl")] == [8, 16]

    # One more update, from checkpoint-2's weights, optimizer and schedule state: a longer run than the recipe the
    # finished run was trained under, which resume refuses unless the changed key is named.
    resumed = run_medo1(
        ppo_cli(tiny_model, problems, out, distributed, 24) + ["--allow-changed", "train.total_episodes"],
        launcher=torchrun("medo1"),
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"resuming from {last}" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["final_step"] == 3
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


# ---- start-up checks and the published recipe ----------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_fails_at_startup_before_loading_models(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "no-model").mkdir()  # exists (so the config check passes) but holds no model: loading it would fail
    done = run_medo1(
        [
            "rl",
            "--config",
            REPO / "recipes" / "rl-ppo-tiny-cpu.yaml",
            "--output-dir",
            out,
            "--set",
            "sampling.engine=vllm",
            "--set",
            f"model.name_or_path={tmp_path / 'no-model'}",
        ]
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "sampling.engine=vllm needs vLLM" in done.stderr
    assert f"pip install '{GPU_VLLM_PIN}'" in done.stderr
    assert "Traceback" not in done.stderr and "no-model" not in done.stderr
    assert not out.exists()


def test_7b_ppo_recipe_shards_policy_value_and_reference():
    cfg = load_config(RLConfig, REPO / "recipes" / "rl-ppo-qwen2.5-7b-8xh100.yaml")
    assert cfg.train.distributed == "deepspeed_zero3" and cfg.train.precision == "bf16"
    assert cfg.sampling.engine == "vllm" and cfg.sampling.gather_weights_for_generation
    assert cfg.model.gradient_checkpointing
    micro_batches = cfg.train.gradient_accumulation_steps // cfg.ppo.num_mini_batches
    ds = zero3_config(cfg.train, micro_batches, world=8, bf16=True, hidden_size=3584)  # Qwen2.5-7B
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (
        1,
        16,
        128,
    )
    assert ds["gradient_clipping"] == cfg.train.max_grad_norm
    assert "auto" not in json.dumps(ds)


if __name__ == "__main__":
    workers = {worker.__name__: worker for worker in (generate_on_ranks, weights_sent_after_an_update)}
    workers[sys.argv[1]](*sys.argv[2:])
