"""DPO + CE training on a published dataset version: a plain PyTorch loop, or DeepSpeed ZeRO.

``train_dpo`` loads the version, tokenizes it (``data.py``), reads or computes the reference
log-probs once (``reference.py``: no second model in memory), trains with AdamW on
``pair_logprobs_shared`` + ``dpo_ce_loss``, checkpoints under ``checkpoint_uri`` (a folder or
``s3://``) and records a ``models`` row linked to the dataset version. One optimizer step =
``grad_accumulation`` micro-batches of ``micro_batch_size`` pairs on each process; the pairs of
a step depend only on (seed, step) (``data.step_pairs``), so a resumed run sees the same data.

DeepSpeed is imported only when ``deepspeed`` names a ZeRO JSON (``infra/deepspeed/``). These
keys of it are overridden from ``TrainConfig``: ``train_micro_batch_size_per_gpu``,
``gradient_accumulation_steps``, ``train_batch_size`` (their product × world size),
``gradient_clipping`` (max_grad_norm) and ``bf16.enabled``; the AdamW optimizer and the
schedule are ours, handed to ``deepspeed.initialize``.

Multi-node (the GPU work pool's job): DeepSpeed's launcher, run on the first node, reaches the
others over ssh through a hostfile; on Kubernetes every pod runs torchrun instead:

    deepspeed --num_nodes 2 --num_gpus 8 --hostfile /job/hostfile --master_addr "$MASTER" \\
        --module tasks.train.trainer --lake s3://bucket/lake --run-id "$RUN_ID" \\
        --base-model /models/base --dataset-version v7 --deepspeed infra/deepspeed/zero3.json --bf16
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint "$MASTER:29500" \\
        -m tasks.train.trainer <the same arguments>

Each process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment. Rank 0 alone writes the
reference file, the Hugging Face weights and the ``models`` row; every rank uploads its own
ZeRO shards into the same checkpoint folder, which then needs no shared filesystem.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import tempfile
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow.fs as pafs
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from tasks import storage
from tasks.lake import Lake
from tasks.publish import code_revision, get_version, load_version
from tasks.train.data import step_pairs, tokenize_pairs
from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared
from tasks.train.loss import LossConfig, dpo_ce_loss
from tasks.train.reference import load_or_compute_reference

log = logging.getLogger(__name__)
STATE_FILE, DONE_FILE = "training_state.pt", "COMPLETE"


def _opt(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    """One DPO + CE run. Defaults follow LongReward (β 0.15, λ 0.1, lr 1e-6)."""

    base_model: str = field(metadata={"help": "Base model folder: start of the policy and "
                                      "the frozen reference."})
    dataset_version: str = _opt("latest", "Dataset version to train on: vN, N or latest.")
    beta: float = _opt(0.15, "DPO temperature β.")
    ce_weight: float = _opt(0.1, "λ, weight of the CE term on the chosen answer.")
    lr: float = _opt(1e-6, "Peak learning rate of AdamW.")
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0: off).")
    micro_batch_size: int = _opt(1, "Pairs per forward, per process.")
    grad_accumulation: int = _opt(1, "Micro-batches per optimizer step.")
    max_steps: int | None = _opt(None, "Optimizer steps; None: derived from epochs.")
    epochs: float = _opt(1.0, "Passes over the pairs when max_steps is None.")
    schedule: Literal["cosine", "constant"] = _opt("cosine", "LR schedule after warmup.")
    warmup_steps: int = _opt(0, "Linear warmup steps.")
    max_prompt_tokens: int | None = _opt(None, "Prompt length limit (None: no limit).")
    max_answer_tokens: int | None = _opt(None, "Answer length limit, eos included.")
    truncate: Literal["keep_end", "keep_start"] = _opt(
        "keep_end", "Which end of an over-long prompt to keep (keep_end keeps the query).")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward.")
    bf16: bool = _opt(False, "bfloat16 autocast (fp32 master weights); CUDA only.")
    seed: int = _opt(0, "Seed of the data order and the RNGs.")
    checkpoint_uri: str | None = _opt(None, "Folder or s3:// prefix for checkpoints "
                                      "(default: <lake>/checkpoints/<model_version>).")
    checkpoint_every: int = _opt(0, "Checkpoint every N steps (0: only the final one).")
    resume: bool = _opt(False, "Continue from the latest complete checkpoint.")
    deepspeed: str | None = _opt(None, "ZeRO config JSON: train through deepspeed.initialize.")
    shared_prefix: bool = _opt(True, "Encode each prompt once for both answers.")
    model_version: str | None = _opt(None, "Name of the trained model (default m-<run_id>).")

    def __post_init__(self) -> None:
        LossConfig(self.beta, self.ce_weight)  # validates both
        limits = (self.max_prompt_tokens, self.max_answer_tokens, self.max_steps)
        problems = [message for message, bad in (
            ("base_model is required", not self.base_model),
            ("lr must be finite and > 0", not (math.isfinite(self.lr) and self.lr > 0)),
            ("weight_decay, max_grad_norm, warmup_steps and checkpoint_every must be >= 0",
             min(self.weight_decay, self.max_grad_norm, self.warmup_steps,
                 self.checkpoint_every) < 0),
            ("micro_batch_size and grad_accumulation must be >= 1",
             min(self.micro_batch_size, self.grad_accumulation) < 1),
            ("max_steps, max_prompt_tokens and max_answer_tokens must be >= 1 or None",
             any(v is not None and v < 1 for v in limits)),
            ("epochs must be > 0", not self.epochs > 0),
            ("schedule must be cosine or constant", self.schedule not in ("cosine", "constant")),
            ("truncate must be keep_end or keep_start",
             self.truncate not in ("keep_end", "keep_start")),
            ("bf16 needs CUDA", self.bf16 and not torch.cuda.is_available()),
            (f"deepspeed config {self.deepspeed} not found",
             self.deepspeed and not Path(self.deepspeed).is_file()),
        ) if bad]
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class TrainResult:
    model_version: str
    dataset_version: str
    checkpoint_uri: str
    history: list[dict[str, float]]  # one dict per optimizer step, step 1 first
    final_metrics: dict[str, float]
    truncation: dict[str, int]
    reference_reused: bool


def latest_checkpoint(uri: str) -> tuple[int, str] | None:
    """(step, uri) of the newest ``step-N`` folder under ``uri`` that was completed."""
    fs, path = storage.filesystem(uri)
    found = [(int(m[1]), storage.join(uri, info.base_name))
             for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
             if (m := re.fullmatch(r"step-(\d+)", info.base_name))]
    done = [item for item in found if storage.exists(storage.join(item[1], DONE_FILE))]
    return max(done) if done else None


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class _EngineForward:
    """The model as the log-prob functions use it (``config``, ``parameters()``, a call),
    served by a DeepSpeed engine, whose own ``config`` is its JSON."""

    def __init__(self, engine) -> None:
        self.engine, self.config, self.parameters = engine, engine.module.config, engine.parameters

    def __call__(self, **kwargs):
        return self.engine(**kwargs)


def _deepspeed(config: TrainConfig, world: int, **objects) -> tuple:
    import deepspeed  # the GPU pool's dependency only: pip install '.[gpu]'

    ds = json.loads(Path(config.deepspeed).read_text())
    ds |= {"train_micro_batch_size_per_gpu": config.micro_batch_size,
           "gradient_accumulation_steps": config.grad_accumulation,
           "train_batch_size": config.micro_batch_size * config.grad_accumulation * world,
           "gradient_clipping": config.max_grad_norm}
    ds.setdefault("bf16", {})["enabled"] = config.bf16
    engine, optimizer, _, scheduler = deepspeed.initialize(config=ds, **objects)
    return engine, optimizer, scheduler


def train_dpo(lake: Lake, config: TrainConfig, run_id: str,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train, checkpoint and record one model; ``on_step(step, metrics)`` after each step."""
    env = os.environ
    rank, world, local_rank = (int(env.get(k, d)) for k, d in
                               (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if world > 1 and not config.deepspeed:
        raise ValueError("multi-process training needs deepspeed= (a ZeRO config)")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    version = get_version(lake, config.dataset_version)
    model_version = config.model_version or f"m-{run_id}"
    ckpt_root = config.checkpoint_uri or storage.join(lake.root, "checkpoints", model_version)
    latest = latest_checkpoint(ckpt_root)
    if latest and not config.resume:
        raise ValueError(f"{ckpt_root} already has checkpoints: resume, or use another uri")
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    pairs, truncation = tokenize_pairs(load_version(lake, version.version), tokenizer,
                                       config.max_prompt_tokens, config.max_answer_tokens,
                                       config.truncate)
    if not pairs:
        raise ValueError(f"dataset version {version.version} has no pairs")
    # DeepSpeed keeps fp32 master weights itself; the plain loop keeps them in the model.
    dtype = torch.bfloat16 if config.deepspeed and config.bf16 else torch.float32

    def load(path: str):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa").to(device)

    scratch = tempfile.TemporaryDirectory(prefix="longreward-train-")
    resume_dir = latest[1] if latest else None
    if resume_dir and storage.is_s3(resume_dir):  # every rank fetches it (its own shards)
        fs, path = storage.filesystem(resume_dir)
        pafs.copy_files(path, resume_dir := tempfile.mkdtemp(dir=scratch.name),
                        source_filesystem=fs)
    # The plain loop resumes from the checkpoint's weights, DeepSpeed from base + its state.
    model = None if resume_dir and not config.deepspeed else load(config.base_model)
    if world > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 computes and stores the reference first
    with autocast:
        ref = load_or_compute_reference(
            version, pairs, config.base_model, model or (lambda: load(config.base_model)),
            micro_batch_size=config.micro_batch_size, shared_prefix=config.shared_prefix,
            write=rank == 0)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    model = model or load(resume_dir)
    if config.gradient_checkpointing:  # transformers 5 renamed it; 4.x has the old name only
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
    model.train()
    global_batch = config.micro_batch_size * config.grad_accumulation * world
    max_steps = config.max_steps or math.ceil(config.epochs * len(pairs) / global_batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        "cosine" if config.schedule == "cosine" else "constant_with_warmup", optimizer,
        num_warmup_steps=config.warmup_steps, num_training_steps=max_steps)
    engine, start, history = None, 0, []
    if config.deepspeed:
        engine, optimizer, scheduler = _deepspeed(config, world, model=model,
                                                  optimizer=optimizer, lr_scheduler=scheduler)
    if resume_dir:
        if engine:
            state = engine.load_checkpoint(resume_dir, tag="ds")[1]
        else:
            state = torch.load(Path(resume_dir, STATE_FILE), weights_only=False)  # our file
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], state["history"]
        _set_rng_state(state["rng"])
        if start > max_steps:
            raise ValueError(f"the checkpoint is at step {start}, past max_steps {max_steps}")
    scorer = _EngineForward(engine) if engine else model
    pair_fn = pair_logprobs_shared if config.shared_prefix else pair_logprobs_unshared
    loss_config = LossConfig(config.beta, config.ce_weight)

    def save(step: int) -> str:
        """Weights (save_pretrained), tokenizer, step, history, optimizer, scheduler and RNG,
        then COMPLETE. In place for a folder; for s3:// in a temp dir, then uploaded."""
        uri = storage.join(ckpt_root, f"step-{step:08d}")
        local = tempfile.mkdtemp(dir=scratch.name) if storage.is_s3(uri) else uri
        state = {"step": step, "history": history, "rng": _rng_state()}
        if engine:  # every rank writes its ZeRO shards; the 16-bit weights are gathered
            engine.save_checkpoint(local, tag="ds", client_state=state)
            engine.save_16bit_model(local)
        if rank == 0:
            if engine:
                engine.module.config.save_pretrained(local)
            else:
                model.save_pretrained(local)
                torch.save(state | {"optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict()}, Path(local, STATE_FILE))
            tokenizer.save_pretrained(local)
            Path(local, "metrics.json").write_text(json.dumps(history, indent=1))
        if local != uri:
            fs, path = storage.filesystem(uri)
            pafs.copy_files(local, path, destination_filesystem=fs)
        if world > 1:
            torch.distributed.barrier()
        if rank == 0:
            storage.write_bytes(storage.join(uri, DONE_FILE), run_id.encode())
        return uri

    per_rank = config.micro_batch_size * config.grad_accumulation
    for step in range(start, max_steps):
        began = time.perf_counter()
        mine = step_pairs(step, len(pairs), global_batch, config.seed)[rank * per_rank :]
        parts = []
        for j in range(config.grad_accumulation):
            idx = mine[j * config.micro_batch_size :][: config.micro_batch_size]
            batch = [pairs[i] for i in idx]
            with autocast:
                c, r = pair_fn(scorer, [p.prompt_ids for p in batch],
                               [p.chosen_ids for p in batch], [p.rejected_ids for p in batch])
            loss, metrics = dpo_ce_loss(c.logps, r.logps, ref.chosen[idx].to(device),
                                        ref.rejected[idx].to(device), c.nll_sum, c.n_tokens,
                                        loss_config)
            if engine:
                engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
                engine.step()  # a real optimizer step only at the accumulation boundary
            else:
                (loss / config.grad_accumulation).backward()
            tokens = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)
                         for p in batch)
            parts.append(metrics | {"loss": loss.item(), "tokens": float(tokens)})
        lr = scheduler.get_last_lr()[0]
        if engine:
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                model.parameters(), config.max_grad_norm or float("inf")))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        row = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        row["tokens"] *= len(parts) * world  # a sum; the rest are means
        if world > 1:
            values = torch.tensor(list(row.values()), device=device, dtype=torch.float64)
            torch.distributed.all_reduce(values)
            row = dict(zip(row, (values / world).tolist(), strict=True))
        row |= {"step": step + 1, "lr": lr, "grad_norm": grad_norm,
                "epoch": (step + 1) * global_batch / len(pairs),
                "seconds": time.perf_counter() - began}
        history.append(row)
        log.info("step %d/%d loss %.4f dpo %.4f ce %.4f margin %.4f acc %.2f lr %.3g", step + 1,
                 max_steps, row["loss"], row["loss/dpo"], row["loss/ce"],
                 row["rewards/margins"], row["rewards/accuracies"], lr)
        if step + 1 == max_steps or (config.checkpoint_every
                                     and (step + 1) % config.checkpoint_every == 0):
            save(step + 1)
        if on_step and rank == 0:
            on_step(step + 1, row)

    final_uri, final = storage.join(ckpt_root, f"step-{max_steps:08d}"), dict(history[-1])
    if rank == 0:
        hyper = asdict(config) | {"global_batch": global_batch, "world_size": world,
                                  "max_steps": max_steps, "pairs": len(pairs)}
        metrics = {"final": final, "first_loss": history[0]["loss"], "steps": len(history),
                   "truncation": truncation.as_dict(), "reference_uri": ref.uri,
                   "reference_reused": ref.reused}
        lake.upsert("models", [{
            "model_version": model_version, "dataset_version": version.version,
            "base_model": config.base_model, "hyperparameters": json.dumps(hyper),
            "metrics": json.dumps(metrics), "checkpoint_uri": final_uri,
            "code_revision": code_revision(), "run_id": run_id, "created_at": datetime.now(UTC)}])
    scratch.cleanup()
    return TrainResult(model_version, version.version, final_uri, history, final,
                       truncation.as_dict(), ref.reused)


def main(argv: list[str] | None = None) -> TrainResult:
    """Command line over ``TrainConfig``: every field is a ``--flag`` with its help text."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", required=True, help="Lake root (folder or s3://).")
    parser.add_argument("--run-id", default=f"train-{int(time.time())}")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # deepspeed adds it
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        hint, kwargs = hints[f.name], {"help": f.metadata.get("help")}
        if isinstance(hint, types.UnionType):  # X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            kwargs["choices"] = typing.get_args(hint)
        else:
            kwargs["type"] = hint
        required = f.name == "base_model"
        parser.add_argument("--" + f.name.replace("_", "-"), required=required,
                            default=None if required else f.default, **kwargs)
    args = vars(parser.parse_args(argv))
    lake, run_id, _ = Lake(args.pop("lake")), args.pop("run_id"), args.pop("local_rank")
    return train_dpo(lake, TrainConfig(**args), run_id)


if __name__ == "__main__":
    main()
