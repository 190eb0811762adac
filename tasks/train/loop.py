"""The optimisation side of a training run: processes, the wrapped model, steps, checkpoints.

``Processes`` reads RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun, ``deepspeed`` or the
``train-dpo`` flow's launcher) and joins the process group (NCCL on GPUs, gloo on CPUs).
``TrainingLoop`` owns the optimizer and schedule and runs one optimizer step at a time in one
of three ways: a plain loop (one process), DistributedDataParallel (several processes, no
DeepSpeed config), or a DeepSpeed ZeRO engine. It knows nothing of the lake or the dataset.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import get_scheduler

from tasks.train.data import TokenizedPair, step_pairs
from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared
from tasks.train.loss import LossConfig, dpo_ce_loss

STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @classmethod
    def join(cls, env: dict[str, str]) -> Processes:
        rank, world, local_rank = (int(env.get(k, d)) for k, d in
                                   (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        return cls(rank, world, local_rank, device)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, row: dict[str, float]) -> dict[str, float]:
        """The mean of each value over the processes."""
        if self.world == 1:
            return row
        values = torch.tensor(list(row.values()), device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(values)
        return dict(zip(row, (values / self.world).tolist(), strict=True))


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class _Forward:
    """The model as the log-prob functions use it (``config``, ``parameters()``, a call),
    served by a wrapper (a DeepSpeed engine, DDP) whose call syncs what it must."""

    def __init__(self, wrapper: nn.Module, module: nn.Module) -> None:
        self.wrapper, self.config, self.parameters = wrapper, module.config, module.parameters

    def __call__(self, **kwargs: Any) -> Any:
        return self.wrapper(**kwargs)


class TrainingLoop:
    """Optimizer, schedule and the model wrapper for ``max_steps`` steps over ``pairs``."""

    def __init__(self, config: Any, model: nn.Module, pairs: Sequence[TokenizedPair],
                 reference: Any, procs: Processes, max_steps: int):
        self.config, self.model, self.pairs, self.ref, self.procs = (
            config, model, pairs, reference, procs)
        self.max_steps = max_steps
        self.per_rank = config.micro_batch_size * config.grad_accumulation
        self.global_batch = self.per_rank * procs.world
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = get_scheduler(
            "cosine" if config.schedule == "cosine" else "constant_with_warmup",
            self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max_steps)
        self.engine = self.ddp = None
        if config.deepspeed:
            self.engine = self._deepspeed()
            self.scorer: Any = _Forward(self.engine, self.engine.module)
        elif procs.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[procs.local_rank] if procs.device.type == "cuda" else None)
            self.scorer = _Forward(self.ddp, model)
        else:
            self.scorer = model
        self.pair_fn: Callable = (pair_logprobs_shared if config.shared_prefix
                                  else pair_logprobs_unshared)
        self.loss_config = LossConfig(config.beta, config.ce_weight)
        self.autocast = torch.autocast(procs.device.type, dtype=torch.bfloat16,
                                       enabled=config.bf16)

    def _deepspeed(self) -> Any:
        import deepspeed  # the GPU pool's dependency only: pip install '.[gpu]'

        config = self.config
        ds = json.loads(Path(config.deepspeed).read_text())
        ds |= {"train_micro_batch_size_per_gpu": config.micro_batch_size,
               "gradient_accumulation_steps": config.grad_accumulation,
               "train_batch_size": self.global_batch,
               "gradient_clipping": config.max_grad_norm}
        ds.setdefault("bf16", {})["enabled"] = config.bf16
        engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            config=ds, model=self.model, optimizer=self.optimizer,
            lr_scheduler=self.scheduler)
        return engine

    def restore(self, resume_dir: str) -> tuple[int, list[dict]]:
        """Optimizer, schedule and RNG from a checkpoint; returns (step, history)."""
        if self.engine:
            state = self.engine.load_checkpoint(resume_dir, tag="ds")[1]
        else:
            state = torch.load(Path(resume_dir, STATE_FILE), weights_only=False)  # our file
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if state["step"] > self.max_steps:
            raise ValueError(f"the checkpoint is at step {state['step']}, past max_steps "
                             f"{self.max_steps}")
        return state["step"], state["history"]

    def _micro_batch(self, idx: list[int], sync: bool) -> dict[str, float]:
        batch = [self.pairs[i] for i in idx]
        no_sync = self.ddp.no_sync() if self.ddp and not sync else contextlib.nullcontext()
        with no_sync:
            with self.autocast:
                c, r = self.pair_fn(self.scorer, [p.prompt_ids for p in batch],
                                    [p.chosen_ids for p in batch],
                                    [p.rejected_ids for p in batch])
            device = self.procs.device
            loss, metrics = dpo_ce_loss(c.logps, r.logps, self.ref.chosen[idx].to(device),
                                        self.ref.rejected[idx].to(device), c.nll_sum,
                                        c.n_tokens, self.loss_config)
            if self.engine:
                self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
                self.engine.step()  # a real optimizer step only at the accumulation boundary
            else:  # DDP averages the gradients over processes in the last backward
                (loss / self.config.grad_accumulation).backward()
        tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in batch)
        return metrics | {"loss": loss.item(), "tokens": float(tokens)}

    def step(self, step: int) -> dict[str, float]:
        """One optimizer step; returns its metrics, averaged over micro-batches and processes
        (``tokens`` is their sum)."""
        began = time.perf_counter()
        config, procs = self.config, self.procs
        mine = step_pairs(step, len(self.pairs), self.global_batch,
                          config.seed)[procs.rank * self.per_rank:]
        parts = [self._micro_batch(mine[j * config.micro_batch_size:][:config.micro_batch_size],
                                   sync=j == config.grad_accumulation - 1)
                 for j in range(config.grad_accumulation)]
        lr = self.scheduler.get_last_lr()[0]
        if self.engine:
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), config.max_grad_norm or float("inf")))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        row = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        row["tokens"] *= len(parts) * procs.world  # a sum; the rest are means
        return procs.mean(row) | {
            "step": step + 1, "lr": lr, "grad_norm": grad_norm,
            "epoch": (step + 1) * self.global_batch / len(self.pairs),
            "seconds": time.perf_counter() - began}

    def save(self, local: str, state: dict, tokenizer: Any, history: list[dict]) -> None:
        """Weights, tokenizer, metrics and the state to resume from, into ``local``.

        DeepSpeed: every rank writes its ZeRO shards and the 16-bit weights are gathered;
        otherwise rank 0 writes ``save_pretrained`` weights and the optimizer state.
        """
        if self.engine:
            self.engine.save_checkpoint(local, tag="ds", client_state=state)
            self.engine.save_16bit_model(local)
        if self.procs.rank != 0:
            return
        if self.engine:
            self.engine.module.config.save_pretrained(local)
        else:
            self.model.save_pretrained(local)
            torch.save(state | {"optimizer": self.optimizer.state_dict(),
                                "scheduler": self.scheduler.state_dict()},
                       Path(local, STATE_FILE))
        tokenizer.save_pretrained(local)
        Path(local, "metrics.json").write_text(json.dumps(history, indent=1))
