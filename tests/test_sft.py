"""SFT stage end to end on CPU: a real tiny Qwen2 model, the real Qwen tokenizer, real demo rows."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from medo1.config import load_config
from medo1.sft.trainer import SFTConfig, run_sft
from medo1.training import checkpoint
from medo1.training.metrics import read_metrics
from tests.conftest import TINY_RECIPE, sft_overrides, write_short_rows


def sft(tiny_model, data, out, **extra):
    config = load_config(SFTConfig, TINY_RECIPE, sft_overrides(tiny_model, data, out, **extra))
    return run_sft(config)


@pytest.fixture(scope="module")
def overfit_run(tiny_model, demo_rows, tmp_path_factory):
    """Four rows, one batch, many steps: the loss must collapse. A whole 30-step SFT run: its tests are `e2e`."""
    tmp = tmp_path_factory.mktemp("overfit")
    data = write_short_rows(demo_rows, tmp / "rows.json", 4)
    result = sft(
        tiny_model,
        data,
        tmp / "run",
        **{
            "train.per_device_batch_size": 4,
            "train.max_steps": 30,
            "train.learning_rate": 3e-3,
            "train.warmup_ratio": 0.0,
            "train.lr_scheduler": "constant",
            "output.save_steps": 1000,
        },
    )
    return result


@pytest.mark.e2e
def test_tiny_model_overfits_a_small_batch(overfit_run):
    metrics = [m for m in read_metrics(overfit_run.output_dir / "metrics.jsonl") if "loss" in m]
    first, last = float(metrics[0]["loss"]), float(metrics[-1]["loss"])
    assert first > 11.0  # random init over a 151k vocabulary: ~ln(151k) = 11.9
    assert last <= first / 2, f"loss went {first} -> {last}"
    assert float(metrics[-1]["mean_token_accuracy"]) > float(metrics[0]["mean_token_accuracy"])
    for key in ("loss", "mean_token_accuracy", "learning_rate", "grad_norm", "num_tokens"):
        assert key in metrics[-1], key
    assert any(m.get("tokens_per_second", 0) > 0 for m in metrics)


@pytest.mark.e2e
def test_final_checkpoint_is_written_and_marked(overfit_run):
    checkpoints = checkpoint.list_checkpoints(overfit_run.output_dir)
    assert [step for step, _ in checkpoints] == [30]  # save_steps 1000: only the end-of-run save
    assert checkpoint.is_complete(checkpoints[0][1])
    assert overfit_run.final_step == 30


@pytest.mark.e2e
def test_export_loads_with_from_pretrained_and_generates(overfit_run, tiny_model):
    export = overfit_run.export_dir
    assert (export / "model.safetensors").is_file()
    assert not (overfit_run.output_dir / "export.partial").exists()
    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in GenerationConfig.from_pretrained(export).eos_token_id
    # The export is the trained weights, consolidated: equal to the final checkpoint's.
    final = load_file(overfit_run.output_dir / "checkpoint-30" / "model.safetensors")
    exported = load_file(export / "model.safetensors")
    assert final.keys() == exported.keys()
    assert all(torch.equal(final[k], exported[k]) for k in final)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "A 45-year-old man has anemia. Cause?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) == 8
    assert tokenizer.decode(new_tokens).strip()


@pytest.mark.e2e
def test_run_writes_report_config_and_refuses_to_clobber(overfit_run, tiny_model):
    report = json.loads((overfit_run.output_dir / "data_report.json").read_text())
    assert report["rows"] == report["valid"] == report["trained_examples"] == 4
    saved = load_config(SFTConfig, overfit_run.output_dir / "config.yaml")
    assert saved.train.max_steps == 30
    with pytest.raises(checkpoint.ResumeError, match="--resume auto"):
        run_sft(saved)


def test_data_report_counts_duplicate_rows_as_data_validate_does(tiny_model, demo_rows, tmp_path):
    from medo1.models import load_tokenizer
    from medo1.sft.trainer import prepare_dataset

    data = write_short_rows(demo_rows, tmp_path / "rows.json", 3)
    rows = json.loads(data.read_text())
    data.write_text(json.dumps(rows + [rows[0], rows[2]]))
    config = load_config(SFTConfig, TINY_RECIPE, sft_overrides(tiny_model, data, tmp_path / "run"))
    _, report = prepare_dataset(config, load_tokenizer(tiny_model), tmp_path / "run")
    written = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["duplicates"] == written["duplicates"] == 2
    assert written["rows"] == 5 and written["trained_examples"] == 5  # kept (data.duplicates: keep), and counted


def test_padding_free_and_padded_batches_give_the_same_loss(tiny_model, demo_rows, tmp_path):
    """Padding-free batches lay examples end to end; attention must not leak between them."""
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    losses = {}
    for batching in ("padding_free", "padded"):
        result = sft(
            tiny_model,
            data,
            tmp_path / batching,
            **{"train.max_steps": 1, "train.batching": batching, "output.export": False},
        )
        losses[batching] = float(read_metrics(result.output_dir / "metrics.jsonl")[0]["loss"])
    assert losses["padding_free"] == pytest.approx(losses["padded"], rel=1e-4)


@pytest.mark.parametrize("batching", ["padding_free", "padded"])
def test_compact_loss_matches_trls_fused_head_in_value_and_gradients(tiny_model, demo_rows, tmp_path, batching):
    """On the CPU medo1 projects only the trained positions; TRL's own loss (every position, fused head)
    is the reference: the same loss and the same gradients on the same collated batch."""
    from medo1.models import load_tokenizer
    from medo1.sft.trainer import (
        Medo1SFTTrainer,
        load_model,
        prepare_dataset,
        training_arguments,
    )

    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    config = load_config(
        SFTConfig, TINY_RECIPE, sft_overrides(tiny_model, data, tmp_path / "run", **{"train.batching": batching})
    )
    tokenizer = load_tokenizer(tiny_model)
    dataset, _ = prepare_dataset(config, tokenizer, tmp_path / "run")
    trainer = Medo1SFTTrainer(
        model=load_model(config),
        args=training_arguments(config, tmp_path / "run"),
        train_dataset=dataset,
        processing_class=tokenizer,
        keep_checkpoints=1,
    )
    batch = trainer.data_collator([dataset[i] for i in range(4)])
    assert ("attention_mask" in batch) == (batching == "padded")
    model = trainer.model.train()
    results = {}
    for name, loss_of in (
        ("compact", trainer.compact_loss),
        ("trl", lambda m, b, n: super(Medo1SFTTrainer, trainer).compute_loss(m, b, num_items_in_batch=n)),
    ):
        model.zero_grad()
        tokens = (batch["labels"][:, 1:] != -100).sum()
        loss = loss_of(model, dict(batch), tokens)
        loss.backward()
        results[name] = (loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()})
    assert results["compact"][0] == pytest.approx(float(results["trl"][0]), rel=1e-5)
    for key, grad in results["trl"][1].items():
        torch.testing.assert_close(results["compact"][1][key], grad, rtol=1e-4, atol=1e-7, msg=key)
    assert trainer._metrics["train"]["mean_token_accuracy"]


def test_packed_run_trains_on_full_rows_and_reports_to_tensorboard(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 12)
    result = sft(
        tiny_model,
        data,
        tmp_path / "packed",
        **{
            "train.max_steps": 2,
            "train.batching": "packed",
            "output.export": False,
            "output.batch_trace": True,
            "output.report_to": "[tensorboard]",
        },
    )
    assert list(result.output_dir.glob("runs/**/events.out.tfevents.*")), "TensorBoard was asked for"
    trace = [json.loads(line) for line in (result.output_dir / "batch-trace-rank0.jsonl").read_text().splitlines()]
    assert [t["step"] for t in trace] == [1, 2]
    # 12 rows of ~100 tokens packed into rows of at most 256 tokens, two rows per batch.
    assert all(t["tokens"] <= 2 * 256 for t in trace)
    assert result.final_step == 2


def test_lora_export_is_merged_and_loads_without_peft(tiny_model, demo_rows, tmp_path):
    data = write_short_rows(demo_rows, tmp_path / "rows.json", 4)
    result = sft(
        tiny_model,
        data,
        tmp_path / "lora",
        **{"lora.enabled": True, "lora.r": 4, "train.max_steps": 3, "train.learning_rate": 1e-2},
    )
    assert (result.output_dir / "adapter" / "adapter_config.json").is_file()
    assert not (result.export_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(result.export_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    changed = [
        name for (name, p), (_, q) in zip(merged.named_parameters(), base.named_parameters()) if not torch.equal(p, q)
    ]
    assert changed and all("proj" in name for name in changed)


@pytest.mark.e2e
def test_dropping_most_rows_as_over_long_warns_and_overlong_fail_stops(tiny_model, demo_rows, tmp_path, caplog):
    """Issue 28: 92% of the rows dropped as over-long once showed only as an INFO line."""
    from medo1.data.sources import DataError, load_from_config
    from medo1.data.tokenization import encode_sft
    from medo1.models import load_tokenizer
    from medo1.sft.trainer import prepare_dataset

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(demo_rows[:8]))  # full demo rows: hundreds of tokens each
    tokenizer = load_tokenizer(tiny_model)

    def config(**extra):
        overrides = sft_overrides(tiny_model, data, tmp_path / "run", **{"data.max_length": limit, **extra})
        return load_config(SFTConfig, TINY_RECIPE, overrides)

    limit = 100_000
    _, whole = prepare_dataset(config(), tokenizer, tmp_path / "run")
    assert whole["warnings"] == [] and whole["dropped_overlong"] == 0
    limit = sorted(encode_sft(tokenizer, load_from_config(config().data).examples, 100_000).lengths)[2]  # 5 of 8 over

    with caplog.at_level("WARNING", logger="medo1.sft.trainer"):
        _, report = prepare_dataset(config(), tokenizer, tmp_path / "run")
    dropped = report["dropped_overlong"]
    assert dropped > 0.25 * report["valid"] and report["trained_examples"] == report["valid"] - dropped
    (warning,) = report["warnings"]
    assert dropped == 5 and warning.startswith(f"5 of 8 valid row(s) (62%) are longer than data.max_length={limit}")
    assert warning in caplog.text and json.loads((tmp_path / "run" / "data_report.json").read_text())["warnings"] == [
        warning
    ]
    with pytest.raises(
        DataError,
        match=rf"5 row\(s\) longer than data.max_length={limit} tokens \(data.overlong=fail\):"
        rf"\n  .*rows\.json row \d+: too long: \d+ tokens > max_length {limit}",
    ):
        prepare_dataset(config(**{"data.overlong": "fail"}), tokenizer, tmp_path / "run")


def test_zero3_steps_torchs_fused_adamw_not_a_deepspeed_optimizer(tmp_path):
    """No "optimizer" in medo1's ZeRO-3 config: DeepSpeed then steps the Trainer's own optimizer (transformers'
    integrations/deepspeed.py, deepspeed_optim_sched), torch's fused AdamW, named here rather than left to
    transformers' default. DeepSpeed's FusedAdam would need its CUDA op, which the image does not compile."""
    from medo1.training.arguments import TRAINER_OPTIMIZER, ZERO3, trainer_arguments

    config = load_config(SFTConfig, TINY_RECIPE, overrides=["train.distributed=deepspeed_zero3"])
    arguments = trainer_arguments(config.train, config.output, tmp_path, gradient_checkpointing=False)
    assert "optimizer" not in ZERO3 and arguments["deepspeed"] == ZERO3
    assert arguments["optim"] == TRAINER_OPTIMIZER == "adamw_torch_fused"
