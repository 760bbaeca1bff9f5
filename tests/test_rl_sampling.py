"""PPO samples and trains against the distribution its maths assumes: plain temperature sampling whatever the
checkpoint's generation_config.json says, log-probs of the sampled tokens that match the sampler's, no dropout in
policy, reference or value, and a fresh (seeded) mini-batch shuffle every update."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from medo1.rl.config import RLTrainConfig, SamplingConfig
from medo1.rl.engines import HFEngine
from medo1.rl.ppo import epoch_orders, load_policy, load_value_model
from medo1.rl.rollout import encode_prompts, full_sequence, response_logprobs, response_values
from medo1.rl.sharding import Placement, Ranks

SAMPLING = SamplingConfig(response_length=16, temperature=0.7)
PROMPTS = [
    [{"role": "user", "content": "Is fever a symptom of flu?"}],
    [{"role": "user", "content": "A longer case: 54-year-old, chest pain for two hours, sweating. Next step?"}],
]
# Qwen2.5-7B-Instruct's generation_config.json.
HUB_GENERATION_DEFAULTS = {"repetition_penalty": 1.05, "top_k": 20, "top_p": 0.8, "temperature": 0.7, "do_sample": True}


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The same weights twice: without and with the hub's sampling defaults in generation_config.json.

    The final norm is scaled up so the tiny random model's next-token distributions are peaked: it then
    repeats tokens, and a repetition penalty visibly changes what it samples."""
    root = tmp_path_factory.mktemp("sampling")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.model.norm.weight.mul_(8)
    model.save_pretrained(root / "plain")
    for key, value in HUB_GENERATION_DEFAULTS.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(root / "hub-defaults")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(root / "tokenizer")
    return {"plain": root / "plain", "hub": root / "hub-defaults", "tokenizer": root / "tokenizer"}


def engine_for(model_dir: Path, tokenizer) -> HFEngine:
    alone = Placement(Ranks(0, 1, 0, torch.device("cpu")), RLTrainConfig(), 1)
    policy = alone.trained(
        load_policy(str(model_dir), SAMPLING.temperature, trainable=True),
        functools.partial(torch.optim.AdamW, lr=1e-5),
        functools.partial(get_scheduler, "constant"),
    )
    return HFEngine(policy, tokenizer, SAMPLING, alone, alone.ranks)


@pytest.mark.real_model  # ~20 s on a loaded 2-core machine: four 16-token generations over the 151k vocabulary
def test_checkpoint_generation_config_does_not_change_sampling(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["tokenizer"])
    prompt = encode_prompts(tokenizer, PROMPTS, "cpu")
    sampled, inherited = {}, {}
    for name in ("plain", "hub"):
        engine = engine_for(checkpoints[name], tokenizer)
        assert engine.policy.model.generation_config.repetition_penalty == (1.05 if name == "hub" else None)
        torch.manual_seed(0)
        sampled[name] = engine.generate(prompt)
        assert sampled[name].logprobs is None  # the hf engine samples from the trained policy itself
        # What a plain `generate(**kwargs)` call does: the checkpoint's repetition penalty sneaks in.
        torch.manual_seed(0)
        inherited[name] = engine.policy.model.generate(
            **prompt,
            do_sample=True,
            temperature=SAMPLING.temperature,
            top_p=1.0,
            top_k=0,
            max_new_tokens=SAMPLING.response_length,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert engine.policy.model.generation_config.repetition_penalty == (1.05 if name == "hub" else None)
    assert not torch.equal(inherited["plain"], inherited["hub"])  # the penalty does change these tokens
    assert torch.equal(sampled["plain"][0], sampled["hub"][0])
    assert torch.equal(sampled["plain"][1], sampled["hub"][1])


def test_sampled_token_logprobs_match_the_rollout_logprobs(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["tokenizer"])
    prompt = encode_prompts(tokenizer, PROMPTS, "cpu")
    engine = engine_for(checkpoints["hub"], tokenizer)
    torch.manual_seed(1)
    responses, mask, _, _ = engine.generate(prompt)
    torch.manual_seed(1)
    out = engine.sample(prompt, output_scores=True, return_dict_in_generate=True)
    prompt_len = prompt["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, prompt_len:].masked_fill(mask == 0, tokenizer.pad_token_id), responses)
    # The sampler's distribution at each step (its processed scores) at the token it drew.
    sampler = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
    sampler = sampler.gather(-1, out.sequences[:, prompt_len:, None]).squeeze(-1).masked_fill(mask == 0, 0.0)
    rollout, _ = response_logprobs(
        engine.policy.module, full_sequence(prompt, responses, mask), prompt_len, mask, SAMPLING.temperature
    )
    assert mask.sum() > 8
    torch.testing.assert_close(rollout, sampler, rtol=1e-4, atol=1e-4)


def test_dropout_is_off_in_policy_reference_and_value(tiny_model, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.config.attention_dropout = 0.5
    model.save_pretrained(tmp_path / "dropout")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = encode_prompts(tokenizer, PROMPTS, "cpu")
    sequence = full_sequence(prompt, prompt["input_ids"][:, -4:], torch.ones_like(prompt["input_ids"][:, -4:]))
    prompt_len = prompt["input_ids"].shape[1]
    mask = torch.ones(2, 4)

    def twice(forward) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        first = forward()
        return first, forward()

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "dropout").train()
    first, second = twice(lambda: plain(**sequence).logits)
    assert not torch.equal(first, second)  # the checkpoint does have dropout in training mode

    policy = load_policy(str(tmp_path / "dropout"), 0.7, trainable=True).train()
    reference = load_policy(str(tmp_path / "dropout"), 0.7, trainable=False).train()
    value = load_value_model(str(tmp_path / "dropout"), tokenizer.pad_token_id).train()
    for model in (policy, reference):
        first, second = twice(lambda m=model: response_logprobs(m, sequence, prompt_len, mask, 0.7, compact=True)[0])
        assert torch.equal(first, second)
    first, second = twice(lambda: response_values(value, sequence, prompt_len))
    assert torch.equal(first, second)


def test_ppo_epoch_shuffle_changes_every_update_and_is_seeded():
    orders = [epoch_orders(42, update, size=16, epochs=3) for update in range(4)]
    flat = [tuple(order.tolist()) for update in orders for order in update]
    assert len(set(flat)) == len(flat)  # every epoch of every update has its own order
    assert all(sorted(order) == list(range(16)) for order in flat)
    again = epoch_orders(42, 2, size=16, epochs=3)
    assert all(torch.equal(a, b) for a, b in zip(again, orders[2]))  # the same on every rank and after a resume
    other_seed = epoch_orders(43, 2, size=16, epochs=3)
    assert not all(torch.equal(a, b) for a, b in zip(other_seed, orders[2]))
