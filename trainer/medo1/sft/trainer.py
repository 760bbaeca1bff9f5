"""SFT stage: chain-of-thought supervised fine-tuning on TRL's SFTTrainer.

What we take from TRL / transformers: the training loop, gradient accumulation, the fused LM head
(no full-vocabulary logits kept), padding-free and packed batching, DeepSpeed / FSDP through
accelerate, W&B / TensorBoard reporting, and resuming with the same seeded data order.
Where we diverge, and why:
- tokenization and loss masks are ours (`medo1.data.tokenization`), so the trained prompt is exactly the
  inference prompt and every dropped or cut row is reported;
- checkpoints get a completion marker and our own rotation (`medo1.training.checkpoint`): transformers
  writes checkpoints in place and picks the highest-numbered directory on resume, complete or not;
- the export is written aside and renamed into place (`medo1.models.export_from_trainer`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from medo1.config import dump_config
from medo1.data.sources import (
    DataError,
    enforce_overlong,
    enforce_policy,
    load_from_config,
    overlong_warning,
    write_rejects,
)
from medo1.data.tokenization import encode_sft, length_stats
from medo1.models import (
    export_from_trainer,
    fused_head_is_compact,
    head_at,
    load_tokenizer,
    resolve_dtype,
)
from medo1.sft.config import SFTConfig
from medo1.training.arguments import trainer_arguments
from medo1.training.callbacks import JsonlMetrics
from medo1.training.checkpoint import MarkedCheckpoints, SaveAtEnd
from medo1.training.preemption import StopOnSigterm, sigterm_stops_training
from medo1.training.process import is_main_process, rank
from medo1.training.resume import RunStart, open_run
from medo1.training.run_report import write_report_safely

log = logging.getLogger(__name__)


@dataclass
class SFTResult:
    output_dir: Path
    final_step: int
    export_dir: Path | None
    data_report: dict
    already_finished: bool = False
    """The run had finished before: nothing was trained or written."""


def prepare_dataset(config: SFTConfig, tokenizer, output_dir: Path) -> tuple[Dataset, dict]:
    """Load, validate and tokenize; write the rejects file and the data report (rank 0)."""
    data = config.data
    loaded = load_from_config(data)
    rejects_path = output_dir / "rejects.jsonl"
    enforce_policy(loaded.problems, data.on_invalid)
    encoded = encode_sft(tokenizer, loaded.examples, data.max_length, data.overlong, source=data.path)
    enforce_overlong(encoded.dropped, data.overlong, data.max_length)
    warning = overlong_warning(len(encoded.dropped), len(loaded.examples), data.max_length)
    if warning:
        log.warning("%s", warning)
    report = {
        "path": data.path,
        "format": data.format,
        "rows": loaded.rows,
        "valid": len(loaded.examples),
        "invalid": len(loaded.problems),
        "duplicates": len(loaded.duplicates),
        "dropped_overlong": len(encoded.dropped),
        "truncated": encoded.truncated,
        "trained_examples": len(encoded.input_ids),
        "tokens": length_stats(encoded.lengths, data.max_length),
        "warnings": [warning] if warning else [],
    }
    rejected = loaded.problems + encoded.dropped
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        if rejected:
            write_rejects(rejects_path, rejected, loaded.raw)
            report["rejects_file"] = str(rejects_path)
        (output_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    if not encoded.input_ids:
        raise DataError(f"{data.path}: no trainable examples left ({json.dumps(report)})")
    log.info("data: %s", json.dumps(report))
    dataset = Dataset.from_dict({"input_ids": encoded.input_ids, "labels": encoded.labels})
    return dataset, report


def training_arguments(config: SFTConfig, output_dir: Path) -> TRLSFTConfig:
    train, out = config.train, config.output
    return TRLSFTConfig(
        **trainer_arguments(train, out, output_dir, config.model.gradient_checkpointing),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        logging_first_step=True,
        dataloader_num_workers=train.dataloader_workers,
        # Rows are already within data.max_length (medo1.data.tokenization); TRL only needs it as the pack size.
        max_length=config.data.max_length if train.batching == "packed" else None,
        packing=train.batching == "packed",
        packing_strategy="bfd",
        padding_free=train.batching == "padding_free",
        dataset_num_proc=None,
    )


class Medo1SFTTrainer(MarkedCheckpoints, SFTTrainer):
    """SFTTrainer with marked-complete checkpoints, our rotation, an optional batch trace, and a compact
    loss where TRL's fused LM head has no Triton kernel (the CPU).

    On CUDA, TRL's fused head projects only the trained positions, in tiles. Elsewhere it projects every
    position (prompt tokens too), again in the backward pass, and computes entropy: about 2.6x the
    time of the model's own loss and 5.6x that of projecting only the trained positions, which is what
    `compact_loss` does (measured on the tiny CPU model, where the 151,936-token head is the work).
    """

    def __init__(self, *args, batch_trace: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_trace = batch_trace

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.batch_trace is not None:
            ids = inputs["input_ids"].detach().cpu().numpy().tobytes()
            entry = {
                "step": self.state.global_step + 1,
                "fingerprint": hashlib.sha1(ids).hexdigest()[:16],
                "tokens": int(inputs["input_ids"].numel()),
            }
            with self.batch_trace.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or fused_head_is_compact(inputs["input_ids"].device):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self.compact_loss(model, inputs, num_items_in_batch)

    def compact_loss(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Token-mean cross-entropy over the trained (label != -100) positions, the head applied to those only,
        normalised as TRL normalises its own loss; logs mean_token_accuracy as TRL does."""
        labels = inputs["labels"]
        targets = labels[:, 1:]
        trained = torch.cat([targets != -100, torch.zeros_like(targets[:, :1], dtype=torch.bool)], dim=1)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with head_at(self.accelerator.unwrap_model(model), trained):
            logits = model(**model_inputs, use_cache=False).logits.float()
        wanted = targets[targets != -100]
        count = wanted.numel() if num_items_in_batch is None else num_items_in_batch
        loss = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum") / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients across ranks
        with torch.no_grad():
            correct = self.accelerator.gather_for_metrics((logits.argmax(-1) == wanted).sum()).sum()
            valid = self.accelerator.gather_for_metrics(torch.tensor(wanted.numel(), device=logits.device)).sum()
        mode = "train" if model.training else "eval"
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            # Input tokens seen, as TRL counts them (padding included where there is an attention mask).
            seen = (
                inputs["attention_mask"].sum()
                if "attention_mask" in inputs
                else torch.tensor(inputs["input_ids"].numel(), device=logits.device)
            )
            self._total_train_tokens += self.accelerator.gather_for_metrics(seen).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss


def load_model(config: SFTConfig):
    model_cfg = config.model
    dtype = resolve_dtype(model_cfg.dtype)
    if not config.lora.enabled and dtype != torch.float32:
        # Full fine-tuning keeps fp32 master weights; bf16 comes from autocast / DeepSpeed.
        dtype = torch.float32
    kwargs = {"dtype": dtype}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(model_cfg.name_or_path, **kwargs)


def peft_config(config: SFTConfig):
    if not config.lora.enabled:
        return None
    from peft import LoraConfig as PeftLoraConfig

    lora = config.lora
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def run_sft(config: SFTConfig, resume: str = "none") -> SFTResult:
    with open_run(config, resume, "sft") as run:
        if run.finished is not None:
            return finished_result(run)
        return _train(config, run)


def finished_result(run: RunStart) -> SFTResult:
    """The result of a run that had already finished, read back from its folder (nothing is written)."""
    export = run.finished.get("export")
    report_path = run.output_dir / "data_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return SFTResult(
        run.output_dir,
        int(run.finished.get("final_step") or 0),
        run.output_dir / export if export else None,
        report,
        already_finished=True,
    )


def _train(config: SFTConfig, run: RunStart) -> SFTResult:
    output_dir, resume_from = run.output_dir, run.resume_from
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
    dataset, report = prepare_dataset(config, tokenizer, output_dir)
    if is_main_process():
        dump_config(config, output_dir / "config.yaml")
    args = training_arguments(config, output_dir)  # before the model: ZeRO-3 partitions at load time
    if config.train.distributed == "deepspeed_zero3":
        # ZeRO-3 partitions at load time and sizes the batch from DeepSpeed's own communicator: without it set
        # up first, every rank sees a world of 1 and refuses the batch size meant for all ranks.
        import deepspeed

        log.debug("training on %s", args.device)  # sets up torch's process group (TrainingArguments._setup_devices)
        deepspeed.init_distributed(
            dist_backend=torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        )
    model = load_model(config)
    trace = None
    if config.output.batch_trace:
        trace = output_dir / f"batch-trace-rank{rank()}.jsonl"
    stopper = StopOnSigterm()
    trainer = Medo1SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config(config),
        callbacks=[JsonlMetrics(output_dir / "metrics.jsonl"), SaveAtEnd(), stopper],
        keep_checkpoints=config.output.keep,
        marker_info=run.marker_info,
        batch_trace=trace,
    )
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    with sigterm_stops_training():
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    stopper.raise_if_stopped_early(trainer)
    export_dir = None
    if config.output.export:
        lora_base = config.model.name_or_path if config.lora.enabled else None
        export_dir = export_from_trainer(trainer, tokenizer, output_dir, lora_base=lora_base)
    if is_main_process():
        write_report_safely(output_dir)  # report.html with the curves, for clusters without W&B
    run.finish(trainer.state.global_step, export_dir)
    return SFTResult(output_dir, trainer.state.global_step, export_dir, report)
