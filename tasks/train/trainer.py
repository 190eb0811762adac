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

Each process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment (``loop.Processes``);
several processes without a DeepSpeed config train with DistributedDataParallel (NCCL on GPUs,
gloo on CPUs). Rank 0 alone writes the reference file, the Hugging Face weights and the
``models`` row; every rank uploads its own ZeRO shards into the same checkpoint folder, which
then needs no shared filesystem. The ``train-dpo`` flow launches this module under torchrun
with one process per GPU of its job.
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
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks import storage
from tasks.lake import Lake
from tasks.publish import code_revision, get_version, load_version
from tasks.runs import flow_run_id
from tasks.train.data import tokenize_pairs
from tasks.train.loop import Processes, TrainingLoop, rng_state
from tasks.train.loss import LossConfig
from tasks.train.reference import load_or_compute_reference

log = logging.getLogger(__name__)
DONE_FILE = "COMPLETE"


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


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _local_copy(resume_dir: str | None, scratch: str) -> str | None:
    """A checkpoint on s3:// is fetched by every rank (each needs its own shards)."""
    if resume_dir and storage.is_s3(resume_dir):
        fs, path = storage.filesystem(resume_dir)
        local = tempfile.mkdtemp(dir=scratch)
        pafs.copy_files(path, local, source_filesystem=fs)
        return local
    return resume_dir


def _load_models(config: TrainConfig, version, pairs, procs: Processes,
                 resume_dir: str | None):
    """(policy model, reference log-probs): the reference from the frozen base model, computed
    once by rank 0 and stored beside the version (others wait, then read it)."""
    # DeepSpeed keeps fp32 master weights itself; the plain loop keeps them in the model.
    dtype = torch.bfloat16 if config.deepspeed and config.bf16 else torch.float32

    def load(path: str):
        return AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation="sdpa").to(procs.device)

    # The plain loop resumes from the checkpoint's weights, DeepSpeed from base + its state.
    model = None if resume_dir and not config.deepspeed else load(config.base_model)
    if procs.rank != 0:
        procs.barrier()  # rank 0 computes and stores the reference first
    with torch.autocast(procs.device.type, dtype=torch.bfloat16, enabled=config.bf16):
        ref = load_or_compute_reference(
            version, pairs, config.base_model, model or (lambda: load(config.base_model)),
            micro_batch_size=config.micro_batch_size, shared_prefix=config.shared_prefix,
            write=procs.rank == 0)
    if procs.rank == 0:
        procs.barrier()
    model = model or load(resume_dir)
    if config.gradient_checkpointing:  # transformers 5 renamed it; 4.x has the old name only
        enable = getattr(model, "activation_checkpointing_enable", None)
        (enable or model.gradient_checkpointing_enable)({"use_reentrant": False})
    model.train()
    return model, ref


def train_dpo(lake: Lake, config: TrainConfig, run_id: str,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train, checkpoint and record one model; ``on_step(step, metrics)`` after each step.

    One process, or several (RANK / WORLD_SIZE from torchrun or deepspeed): DDP, or DeepSpeed
    ZeRO when ``deepspeed`` names a config.
    """
    procs = Processes.join(dict(os.environ))
    _seed(config.seed)
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
    scratch = tempfile.TemporaryDirectory(prefix="longreward-train-")
    resume_dir = _local_copy(latest[1] if latest else None, scratch.name)
    model, ref = _load_models(config, version, pairs, procs, resume_dir)
    global_batch = config.micro_batch_size * config.grad_accumulation * procs.world
    max_steps = config.max_steps or math.ceil(config.epochs * len(pairs) / global_batch)
    loop = TrainingLoop(config, model, pairs, ref, procs, max_steps)
    start, history = loop.restore(resume_dir) if resume_dir else (0, [])

    def save(step: int) -> None:
        """Into the step's folder (in a temp dir first for s3://), then COMPLETE."""
        uri = storage.join(ckpt_root, f"step-{step:08d}")
        local = tempfile.mkdtemp(dir=scratch.name) if storage.is_s3(uri) else uri
        loop.save(local, {"step": step, "history": history, "rng": rng_state()}, tokenizer,
                  history)
        if local != uri:
            fs, path = storage.filesystem(uri)
            pafs.copy_files(local, path, destination_filesystem=fs)
        procs.barrier()
        if procs.rank == 0:
            storage.write_bytes(storage.join(uri, DONE_FILE), run_id.encode())

    for step in range(start, max_steps):
        row = loop.step(step)
        history.append(row)
        log.info("step %d/%d loss %.4f dpo %.4f ce %.4f margin %.4f acc %.2f lr %.3g", step + 1,
                 max_steps, row["loss"], row["loss/dpo"], row["loss/ce"],
                 row["rewards/margins"], row["rewards/accuracies"], row["lr"])
        if step + 1 == max_steps or (config.checkpoint_every
                                     and (step + 1) % config.checkpoint_every == 0):
            save(step + 1)
        if on_step and procs.rank == 0:
            on_step(step + 1, row)

    final_uri, final = storage.join(ckpt_root, f"step-{max_steps:08d}"), dict(history[-1])
    if procs.rank == 0:
        hyper = asdict(config) | {"global_batch": global_batch, "world_size": procs.world,
                                  "max_steps": max_steps, "pairs": len(pairs)}
        metrics = {"final": final, "first_loss": history[0]["loss"], "steps": len(history),
                   "truncation": truncation.as_dict(), "reference_uri": ref.uri,
                   "reference_reused": ref.reused}
        lake.upsert("models", [{
            "model_version": model_version, "dataset_version": version.version,
            "base_model": config.base_model, "hyperparameters": json.dumps(hyper),
            "metrics": json.dumps(metrics), "checkpoint_uri": final_uri,
            "code_revision": code_revision(), "run_id": run_id, "created_at": datetime.now(UTC),
            "flow_run_id": flow_run_id()}])
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
