"""Where PPO's models live across ranks (`train.distributed`), behind one interface for the PPO loop.

- ddp: every rank holds full copies; the trained models are wrapped in torch DDP.
- fsdp: torch FSDP2 (`fully_shard`) on every transformer block and on each model, so weights,
  gradients and optimizer state are split across ranks and gathered one block at a time.
- deepspeed_zero3: one DeepSpeed ZeRO-3 engine per model; models are partitioned as they load.

PPO trains two models with their own optimizers (policy and value) next to a frozen reference, so
this module calls torch FSDP2 and DeepSpeed directly instead of going through accelerate: accelerate
drives a single DeepSpeed engine per `Accelerator`, and it runs neither FSDP nor DeepSpeed on CPU
(accelerate 1.15 keeps `MULTI_CPU` there), while torch FSDP2 and DeepSpeed both run over gloo,
which is how the sharded paths are tested without a GPU.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medo1.config import StageError
from medo1.training.arguments import ZERO3, use_bf16

log = logging.getLogger(__name__)

MakeOptimizer = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
MakeScheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def max(self, values: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values


def init_ranks() -> Ranks:
    """This process's place under torchrun (or a lone process); joins the process group when there are peers."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank() if world > 1 else 0, world, local_rank, device)


class TrainedModel:
    """A model being trained, its optimizer and LR schedule, placed by one of the strategies below.

    `model` is the plain model (for `generate`, its config and parameter names); `module` is what
    forward passes go through. Methods marked collective must be called on every rank in the same order.
    """

    model: nn.Module
    module: nn.Module

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def accumulating(self, sync: bool):
        """Around one micro-batch's forward and backward; `sync` is False for all but an optimizer step's last."""
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self) -> float:
        """Clip, apply the optimizer and LR schedule at the end of a mini-batch; returns the gradient norm."""
        raise NotImplementedError

    def learning_rate(self) -> float:
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective: the full weights on rank 0 (on CPU), None elsewhere."""
        raise NotImplementedError

    def named_full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Collective: each parameter whole, one at a time, under its model name."""
        raise NotImplementedError

    def gathered_for_generation(self):
        """Collective: keep the full weights on every rank for the duration (one gather instead of one per step)."""
        return nullcontext()

    def save_training_state(self, directory: Path, name: str) -> None:
        """Collective: optimizer and LR-schedule state under `directory`."""
        raise NotImplementedError

    def load_training_state(self, directory: Path, name: str) -> None:
        raise NotImplementedError


class _TorchOptimized(TrainedModel):
    """Optimizer, schedule and clipping in plain torch (ddp and fsdp)."""

    def __init__(self, ranks: Ranks, micro_batches: int, max_grad_norm: float):
        self.ranks, self.micro_batches, self.max_grad_norm = ranks, micro_batches, max_grad_norm

    def _set_optimizer(self, make_optimizer: MakeOptimizer, make_scheduler: MakeScheduler) -> None:
        self.optimizer = make_optimizer(self.model.parameters())
        self.scheduler = make_scheduler(self.optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.micro_batches).backward()

    def step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def _optimizer_state(self):
        return self.optimizer.state_dict()

    def _load_optimizer_state(self, path: Path) -> None:
        self.optimizer.load_state_dict(torch.load(path, weights_only=False))

    def save_training_state(self, directory: Path, name: str) -> None:
        state = self._optimizer_state()
        if self.ranks.is_main:
            torch.save(state, directory / f"{name}-optimizer.pt")
            torch.save(self.scheduler.state_dict(), directory / f"{name}-scheduler.pt")

    def load_training_state(self, directory: Path, name: str) -> None:
        self._load_optimizer_state(directory / f"{name}-optimizer.pt")
        self.scheduler.load_state_dict(torch.load(directory / f"{name}-scheduler.pt", weights_only=False))


class ReplicatedModel(_TorchOptimized):
    def __init__(self, model, make_optimizer, make_scheduler, ranks: Ranks, micro_batches: int, max_grad_norm: float):
        super().__init__(ranks, micro_batches, max_grad_norm)
        self.model = model.to(ranks.device)
        self.module = DistributedDataParallel(self.model) if ranks.world > 1 else self.model
        self._set_optimizer(make_optimizer, make_scheduler)

    def accumulating(self, sync: bool):
        if sync or not isinstance(self.module, DistributedDataParallel):
            return nullcontext()
        return self.module.no_sync()

    def full_state_dict(self):
        if not self.ranks.is_main:
            return None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def named_full_parameters(self):
        yield from ((name, param.detach()) for name, param in self.model.named_parameters())


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks a transformers model declares unsplittable (its decoder layers)."""
    names = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
    return [m for m in model.modules() if type(m).__name__ in names]


def _fully_shard(model: nn.Module, ranks: Ranks, bf16: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(ranks.device.type, (ranks.world,))
    precision = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in _transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=precision)
    # The model itself is a unit too: embeddings, final norm and heads, gathered in its own forward.
    fully_shard(model, mesh=mesh, mp_policy=precision)
    return model


class FullyShardedModel(_TorchOptimized):
    def __init__(
        self, model, make_optimizer, make_scheduler, ranks: Ranks, micro_batches: int, max_grad_norm: float, bf16: bool
    ):
        super().__init__(ranks, micro_batches, max_grad_norm)
        self.model = self.module = _fully_shard(model, ranks, bf16)
        self._set_optimizer(make_optimizer, make_scheduler)  # after sharding: the optimizer holds the shards

    def _options(self, **kwargs):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kwargs)

    def full_state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=self._options(cpu_offload=True))
        return state if self.ranks.is_main else None

    def named_full_parameters(self):
        for name, param in self.model.named_parameters():
            yield name, param.detach().full_tensor()

    @contextmanager
    def gathered_for_generation(self):
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in self.model.modules() if isinstance(m, FSDPModule)]
        self.model.set_reshard_after_forward(False)
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            self.model.set_reshard_after_forward(True)
            for unit in units:
                unit.reshard()

    def _optimizer_state(self):
        # Gathered whole to rank 0, so a run can resume on a different number of ranks.
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=self._options(cpu_offload=True))

    def _load_optimizer_state(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = torch.load(path, weights_only=False) if self.ranks.is_main else {}
        set_optimizer_state_dict(
            self.model, self.optimizer, optim_state_dict=state, options=self._options(broadcast_from_rank0=True)
        )


class ZeroModel(TrainedModel):
    """A DeepSpeed ZeRO-3 engine: DeepSpeed accumulates over `gradient_accumulation_steps` micro-batches,
    scales the loss, clips and steps the optimizer and LR schedule at each step's last micro-batch."""

    def __init__(self, model, make_optimizer, make_scheduler, config: dict):
        import deepspeed

        self.model = model
        self.module, *_ = deepspeed.initialize(
            model=model, optimizer=make_optimizer(model.parameters()), lr_scheduler=make_scheduler, config=config
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.module.backward(loss)
        self.module.step()  # applies the optimizer only at the last micro-batch of a step

    def step(self) -> float:
        return float(self.module.get_global_grad_norm() or 0.0)

    def learning_rate(self) -> float:
        return self.module.get_lr()[0]

    def full_state_dict(self):
        state = self.module._zero3_consolidated_16bit_state_dict()
        return {k: v.cpu() for k, v in state.items()} if state is not None else None

    def named_full_parameters(self):
        import deepspeed

        for name, param in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.detach()

    @contextmanager
    def gathered_for_generation(self):
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
            # Without its hooks, ZeRO-3 neither re-fetches nor releases the gathered weights at each forward.
            remove_hooks(self.module)
            try:
                yield
            finally:
                add_hooks(self.module)

    def save_training_state(self, directory: Path, name: str) -> None:
        self.module.save_checkpoint(str(directory / f"{name}-zero"), tag="state", save_latest=False)

    def load_training_state(self, directory: Path, name: str) -> None:
        loaded, _ = self.module.load_checkpoint(str(directory / f"{name}-zero"), tag="state")
        if loaded is None:
            raise StageError(f"no DeepSpeed state under {directory / f'{name}-zero'}")


class Placement:
    """ddp: full copies on every rank."""

    sharded = False

    def __init__(self, ranks: Ranks, train, micro_batches: int):
        self.ranks, self.train_config, self.micro_batches = ranks, train, micro_batches
        self.bf16 = use_bf16(train.precision, ranks.device.type == "cuda")

    def autocast(self):
        if self.bf16 and self.ranks.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def trained(self, model: nn.Module, make_optimizer: MakeOptimizer, make_scheduler: MakeScheduler) -> TrainedModel:
        return ReplicatedModel(
            model, make_optimizer, make_scheduler, self.ranks, self.micro_batches, self.train_config.max_grad_norm
        )

    def frozen(self, model: nn.Module) -> nn.Module:
        return model.to(self.ranks.device).eval()


class FSDPPlacement(Placement):
    sharded = True

    def autocast(self):
        return nullcontext()  # FSDP2's mixed-precision policy casts the gathered weights

    def trained(self, model, make_optimizer, make_scheduler):
        return FullyShardedModel(
            model,
            make_optimizer,
            make_scheduler,
            self.ranks,
            self.micro_batches,
            self.train_config.max_grad_norm,
            self.bf16,
        )

    def frozen(self, model):
        return _fully_shard(model, self.ranks, self.bf16).eval()


class ZeroPlacement(Placement):
    sharded = True

    def __init__(self, ranks: Ranks, train, micro_batches: int, hidden_size: int):
        super().__init__(ranks, train, micro_batches)
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend=dist.get_backend())
        self.config = zero3_config(train, micro_batches, ranks.world, self.bf16, hidden_size)
        # Alive for the whole run: transformers partitions models at load time, and TRL's fused LM head
        # gathers the partitioned head, only while it exists.
        self._transformers_hook = HfDeepSpeedConfig(self.config)

    def autocast(self):
        return nullcontext()  # DeepSpeed runs the engines in bf16 itself

    def trained(self, model, make_optimizer, make_scheduler):
        return ZeroModel(model, make_optimizer, make_scheduler, self.config)

    def frozen(self, model):
        import deepspeed

        engine, *_ = deepspeed.initialize(model=model, config=self.config)
        engine.eval()
        return engine


def zero3_config(train, micro_batches: int, world: int, bf16: bool, hidden_size: int) -> dict:
    """The DeepSpeed config for `train.distributed=deepspeed_zero3`: medo1's ZeRO-3 defaults (shared with
    SFT) or `train.deepspeed_config`, with batch sizes, clipping and precision taken from the RL config."""
    if train.deepspeed_config:
        try:
            config = json.loads(Path(train.deepspeed_config).read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"train.deepspeed_config {train.deepspeed_config}: {exc}") from None
    else:
        config = copy.deepcopy(ZERO3)
    if config.get("zero_optimization", {}).get("stage") != 3:
        raise StageError("train.distributed=deepspeed_zero3 needs zero_optimization.stage 3 in the DeepSpeed config")
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise StageError(f"remove {key!r} from the DeepSpeed config: PPO builds its own from train.*")
    config.update(
        train_micro_batch_size_per_gpu=train.per_device_batch_size,
        gradient_accumulation_steps=micro_batches,
        train_batch_size=train.per_device_batch_size * micro_batches * world,
        gradient_clipping=train.max_grad_norm,
        zero_allow_untested_optimizer=True,
    )
    config.setdefault("bf16", {})["enabled"] = bf16
    zero = config["zero_optimization"]
    sized_by_hidden = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in sized_by_hidden.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = value
    left = [key for key, value in _flatten(config) if value == "auto"]
    if left:
        raise StageError(f"DeepSpeed config entries left at 'auto' that PPO cannot fill: {', '.join(left)}")
    return config


def _flatten(config: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def require_backend(train) -> None:
    """Fail at start-up, before any model is loaded, when the sharding library is missing."""
    if train.distributed != "deepspeed_zero3":
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise StageError(
            f"train.distributed=deepspeed_zero3 needs DeepSpeed, which cannot be imported here ({exc}). "
            "Install it with: pip install 'medo1[gpu]'  (or set train.distributed=fsdp or ddp)"
        ) from None


def build_placement(train, ranks: Ranks, micro_batches: int, model_path: str) -> Placement:
    """Build after any model that must stay whole (the verifier): under ZeRO-3, models loaded from here on are
    partitioned as they load."""
    mode = train.distributed
    if mode != "ddp" and ranks.world == 1:
        log.warning("train.distributed=%s on a single process: nothing to shard, running unsharded", mode)
        mode = "ddp"
    if mode == "fsdp":
        return FSDPPlacement(ranks, train, micro_batches)
    if mode == "deepspeed_zero3":
        from transformers import AutoConfig

        hidden_size = AutoConfig.from_pretrained(model_path).get_text_config().hidden_size
        return ZeroPlacement(ranks, train, micro_batches, hidden_size)
    return Placement(ranks, train, micro_batches)
