"""GPU benchmark: one DPO + CE step of a ~1B random-weight Llama in bf16 at 16k-64k prompts.

Variants, all on the same pairs and the same step (reference forward without grad, policy
forward, loss, backward; gradient checkpointing on, as TRL's default):

- ``trl``: TRL's ``DPOTrainer.compute_loss`` (loss_type sigmoid + sft), when ``trl`` imports;
- ``unshared``: ours, TRL's layout (two rows per pair: prompt+chosen, prompt+rejected);
- ``shared``: ours, one packed row per pair, the prompt encoded once;
- ``zero3``: ``shared`` through a DeepSpeed ZeRO-3 engine (``infra/deepspeed/zero3.json``,
  one process), when ``deepspeed`` imports; its step includes the engine's optimizer step.

Printed per (prompt, variant): step time, pair tokens/s (P + C + R per pair, the same useful
work for every variant), MFU (the FLOPs the variant's own layout needs, without the
checkpointing recompute, over the chip's dense bf16 peak) and the step's extra peak memory
(``max_memory_allocated`` above what was allocated before the step). A variant that runs out
of memory is reported as OOM and the run goes on; the run stops starting new work when its
time budget is spent, so it ends inside the device's 10-minute limit.

    python bench/gpu.py                 # H200: prompts 16k, 32k, 64k; answers 512
    python bench/gpu.py --smoke         # CPU, tiny model: checks the script end to end
    bash bench/gpu.sh                   # on the device machine (installs carried wheels)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared  # noqa: E402
from tasks.train.loss import LossConfig, dpo_ce_loss  # noqa: E402

VARIANTS = ("trl", "unshared", "shared", "zero3")
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16, vendor figures


@dataclass(frozen=True)
class Shape:
    """The model: Llama 3.2 1B's shape by default (1.24B parameters, 262M of them embedding)."""

    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 8192
    vocab: int = 128256


SMOKE_SHAPE = Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1024)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-len", default="16384,32768,65536", help="comma-separated")
    ap.add_argument("--answer-len", type=int, default=512)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="start no new (prompt, variant) after this many seconds")
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny model, short prompts, any device")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.prompt_len, args.answer_len, args.steps = "256,512", 32, 1
    args.prompt_lens = [int(x) for x in args.prompt_len.split(",") if x]
    args.variants = [v for v in args.variants.split(",") if v]
    if unknown := set(args.variants) - set(VARIANTS):
        ap.error(f"unknown variants: {sorted(unknown)}")
    return args


def device_and_dtype(smoke: bool) -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if not smoke:
        raise SystemExit("no CUDA device: run with --smoke for the tiny CPU check")
    return torch.device("cpu"), torch.bfloat16


def build_models(shape: Shape, max_len: int, device: torch.device, dtype: torch.dtype,
                 checkpointing: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=max_len,
        tie_word_embeddings=True, rope_theta=500000.0,
    )
    with torch.device(device):  # random init straight on the device
        policy = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                  dtype=dtype)
    policy.train()
    if checkpointing:
        enable = getattr(policy, "activation_checkpointing_enable", None)  # transformers 5
        (enable or policy.gradient_checkpointing_enable)({"use_reentrant": False})
    policy.config.use_cache = False
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    return policy, ref


def make_pairs(shape: Shape, prompt_len: int, answer_len: int) -> dict[str, list[list[int]]]:
    gen = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[list[int]]:
        return torch.randint(3, shape.vocab, (1, n), generator=gen).tolist()

    return {"prompt_ids": ids(prompt_len), "chosen_ids": ids(answer_len),
            "rejected_ids": ids(answer_len)}


def step_flops(shape: Shape, prompt: int, answer: int, shared: bool) -> float:
    """Model FLOPs of one step (reference forward + policy forward and backward = 4 forwards),
    for the variant's layout: matmuls 2·N per token, attention 4·d per (query, key) pair."""
    d, kv = shape.hidden, shape.hidden * shape.kv_heads // shape.heads
    per_layer = 2 * (d * d * 2 + d * kv * 2 + 3 * d * shape.intermediate)
    matmul_per_token = shape.layers * per_layer + 2 * d * shape.vocab
    if shared:
        tokens = prompt + 2 * answer
        pc = prompt + answer  # causal over prompt + chosen; rejected: full prompt + causal self
        pairs = pc * (pc + 1) / 2 + answer * prompt + answer * (answer + 1) / 2
    else:
        tokens = 2 * (prompt + answer)
        pairs = 2 * (prompt + answer) * (prompt + answer + 1) / 2
    forward = matmul_per_token * tokens + shape.layers * 4 * d * pairs
    return 4 * forward


def ours_step(policy, ref, shared: bool, engine=None):
    pair_fn = pair_logprobs_shared if shared else pair_logprobs_unshared
    config = LossConfig(beta=0.15, ce_weight=0.1)
    scorer = _Engine(engine) if engine else policy

    def step(pairs) -> float:
        args = (pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"])
        with torch.no_grad():
            ref_c, ref_r = pair_fn(ref, *args)
        c, r = pair_fn(scorer, *args)
        loss, _ = dpo_ce_loss(c.logps, r.logps, ref_c.logps, ref_r.logps, c.nll_sum,
                              c.n_tokens, config)
        if engine:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
        return loss.item()

    return step


class _Engine:
    """A DeepSpeed engine as the log-prob functions use a model."""

    def __init__(self, engine) -> None:
        self.engine, self.config, self.parameters = engine, engine.module.config, engine.parameters

    def __call__(self, **kwargs):
        return self.engine(**kwargs)


def trl_step(policy, ref, answer_len: int):
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                        eos_token="<eos>", unk_token="<unk>")
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="gpu-dpo-"), beta=0.15, loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.1], max_length=None, gradient_checkpointing=False,  # set by us
        bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), report_to=[],
        per_device_train_batch_size=1)
    dummy = Dataset.from_dict({"prompt": ["<unk>"], "chosen": ["<unk>"], "rejected": ["<unk>"]})
    trainer = DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=dummy,
                         processing_class=tokenizer)

    def step(pairs) -> float:
        rows = [dict(zip(pairs, row, strict=True)) for row in zip(*pairs.values(), strict=True)]
        batch = {k: v.to(policy.device) if hasattr(v, "to") else v
                 for k, v in trainer.data_collator(rows).items()}
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        return loss.item()

    return step


def zero3_engine(policy):
    import deepspeed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    ds = json.loads((ROOT / "infra/deepspeed/zero3.json").read_text())
    ds |= {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "train_batch_size": 1}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds)
    return engine


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, pairs, warm, device: torch.device, steps: int, zero_grad) -> dict:
    step(warm)  # warm-up on a short prompt: kernels chosen, grads and workspaces allocated
    zero_grad()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times, loss = [], float("nan")
    for _ in range(steps):
        start = time.perf_counter()
        loss = step(pairs)
        synchronize(device)
        times.append(time.perf_counter() - start)
        zero_grad()
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else 0
    return {"step_s": sorted(times)[len(times) // 2], "peak_gb": peak / 2**30, "loss": loss}


def run_one(variant: str, prompt: int, args, shape: Shape, device, dtype) -> dict:
    """Fresh models for each measurement, so one variant's leftovers never count for another."""
    policy, ref = build_models(shape, prompt + 2 * args.answer_len, device, dtype,
                               not args.no_checkpointing)
    engine = None
    if variant == "trl":
        step = trl_step(policy, ref, args.answer_len)
    elif variant == "zero3":
        engine = zero3_engine(policy)
        step = ours_step(policy, ref, shared=True, engine=engine)
    else:
        step = ours_step(policy, ref, shared=variant == "shared")
    pairs = make_pairs(shape, prompt, args.answer_len)
    warm = make_pairs(shape, min(prompt, 1024), args.answer_len)
    result = measure(step, pairs, warm, device, args.steps,
                     functools.partial(policy.zero_grad, set_to_none=False))
    flops = step_flops(shape, prompt, args.answer_len, shared=variant in ("shared", "zero3"))
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    result |= {
        "variant": variant, "prompt": prompt,
        "pair_tokens_per_s": (prompt + 2 * args.answer_len) / result["step_s"],
        "mfu": flops / result["step_s"] / (peak * 1e12) if peak else None,
    }
    return result


def available(variant: str) -> str | None:
    """Why a variant cannot run here, or None."""
    needs = {"trl": ("trl", "datasets"), "zero3": ("deepspeed",)}.get(variant, ())
    for module in needs:
        try:
            __import__(module)
        except Exception as exc:  # ImportError, or a broken install (missing CUDA op, ...)
            return f"{module} not importable ({type(exc).__name__}: {str(exc)[:80]})"
    if variant == "zero3" and not torch.cuda.is_available():
        return "ZeRO-3 needs CUDA here (NCCL)"
    return None


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.simplefilter("ignore")
    began = time.perf_counter()
    device, dtype = device_and_dtype(args.smoke)
    shape = SMOKE_SHAPE if args.smoke else Shape()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {dtype}, Llama hidden {shape.hidden} x "
          f"{shape.layers} layers, {shape.heads}/{shape.kv_heads} heads, vocab {shape.vocab}; "
          f"answers {args.answer_len}; checkpointing {not args.no_checkpointing}; "
          f"median of {args.steps} steps", flush=True)
    skipped = {v: why for v in args.variants if (why := available(v))}
    for variant, why in skipped.items():
        print(f"skip {variant}: {why}", flush=True)
    results = []
    print(f"{'prompt':>7} {'variant':<9} {'step s':>8} {'pair tok/s':>11} {'MFU':>6} "
          f"{'extra peak GB':>13} {'loss':>9}", flush=True)
    for prompt in args.prompt_lens:
        for variant in (v for v in args.variants if v not in skipped):
            if time.perf_counter() - began > args.budget_s:
                print(f"{prompt:>7} {variant:<9} skipped: time budget spent", flush=True)
                continue
            try:
                r = run_one(variant, prompt, args, shape, device, dtype)
            except torch.OutOfMemoryError:
                print(f"{prompt:>7} {variant:<9} OOM", flush=True)
                results.append({"variant": variant, "prompt": prompt, "oom": True})
                continue
            finally:  # the models of run_one are garbage now: give their memory back
                gc.collect()
                with contextlib.suppress(Exception):
                    torch.cuda.empty_cache()
            results.append(r)
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
            print(f"{prompt:>7} {variant:<9} {r['step_s']:>8.3f} {r['pair_tokens_per_s']:>11.0f} "
                  f"{mfu:>6} {r['peak_gb']:>13.2f} {r['loss']:>9.5f}", flush=True)
    print(f"{time.perf_counter() - began:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
