"""Benchmark: one DPO + CE training step on long-prompt pairs, three ways.

- ``trl``: TRL 1.16 ``DPOTrainer.compute_loss`` (loss_type sigmoid + sft), rows
  ``prompt+chosen`` and ``prompt+rejected``, reference forward with an explicit ref model;
- ``unshared``: ours, the same two-row layout (``pair_logprobs_unshared``);
- ``shared``: ours, one packed ``[prompt | chosen | rejected]`` row (``pair_logprobs_shared``).

A step is: reference forward (no grad) + policy forward + loss + backward, on a random-weight
Llama built from a config (no download) with random token ids. Time: median wall time of the
timed steps. Memory: each (variant, prompt length) runs in a fresh process; after one warm-up
step on a short prompt (so weights, grad buffers and allocator pools already exist) the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) and ``peak MB`` is VmHWM minus
VmRSS at that point: the extra host memory one step needs (activations, logits, attention
temporaries), not the model's own. Workers run with a fixed glibc mmap threshold so freed
tensors leave RSS (see WORKER_ENV). ``cpu s`` is the step's process CPU time (all threads):
other jobs on the host inflate wall time far more than it, so the summary's time ratios use
it. The summary compares shared with each two-row layout against the limit
``(P + 2A) / (2P + 2A)``, the ratio of tokens a step processes.

    python bench/train.py                          # prompt 2048, answers 256 (~1 min)
    python bench/train.py --prompt-len 4096 --answer-len 512 --steps 2
    # the README's long-context sweep (~10-13 min on 2 busy cores)
    python bench/train.py --prompt-len 2048,8192,16384,32768 --answer-len 512 \\
        --hidden 64 --layers 2 --heads 2 --steps 1
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tasks.train.logprobs import pair_logprobs_shared, pair_logprobs_unshared  # noqa: E402
from tasks.train.loss import LossConfig, dpo_ce_loss  # noqa: E402

VARIANTS = ("trl", "unshared", "shared")


def _lengths(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]
# A fixed mmap threshold makes glibc map every large tensor on its own and unmap it on free, so
# RSS follows live tensor bytes instead of whatever the heap kept from earlier steps.
# Passive OpenMP waits keep idle worker threads from spinning, so a step's process CPU time is
# its work: on a busy host (other jobs on the same cores) wall time inflates, CPU time much less.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "TQDM_DISABLE": "1",
              "OMP_WAIT_POLICY": "PASSIVE"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-len", type=_lengths, default=[2048],
                    help="prompt tokens per pair; a comma-separated list runs a sweep")
    ap.add_argument("--warmup-prompt", type=int, default=256, help="prompt of the warm-up step")
    ap.add_argument("--answer-len", type=int, default=256, help="tokens per answer")
    ap.add_argument("--pairs", type=int, default=1, help="pairs per micro-batch")
    ap.add_argument("--hidden", type=int, default=256, help="model hidden size")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers")
    ap.add_argument("--heads", type=int, default=4, help="attention heads")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.prompt_len) + 2 * args.answer_len,
    )
    policy = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().train()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    return policy, ref


def make_pairs(args: argparse.Namespace, prompt_len: int) -> dict[str, list[list[int]]]:
    gen = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[list[int]]:
        # Ids from 3 up: 0 is the pad id TRL's collator uses.
        rows = torch.randint(3, args.vocab, (args.pairs, n), generator=gen)
        return rows.tolist()

    return {
        "prompt_ids": ids(prompt_len),
        "chosen_ids": ids(args.answer_len),
        "rejected_ids": ids(args.answer_len),
    }


def trl_step_fn(args: argparse.Namespace, policy, ref):
    """TRL's own loss path: DPOTrainer.compute_loss on its own collator's batch."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    # Only used for pad/eos ids: the batch below is built from token ids directly.
    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-dpo-"),
        beta=0.15,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.1],
        max_length=None,  # the default 1024 would truncate the long rows away
        gradient_checkpointing=False,  # TRL defaults to on; ours has none: like for like
        bf16=False,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=args.pairs,
    )
    dummy = Dataset.from_dict({"prompt": ["<unk>"], "chosen": ["<unk>"], "rejected": ["<unk>"]})
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=config, train_dataset=dummy, processing_class=tokenizer
    )

    def step(pairs: dict[str, list[list[int]]]) -> float:
        rows = [dict(zip(pairs, row, strict=True)) for row in zip(*pairs.values(), strict=True)]
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
        loss.backward()
        return loss.item()

    return step


def ours_step_fn(policy, ref, shared: bool):
    pair_fn = pair_logprobs_shared if shared else pair_logprobs_unshared
    config = LossConfig(beta=0.15, ce_weight=0.1)

    def step(pairs: dict[str, list[list[int]]]) -> float:
        prompts, chosen, rejected = pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"]
        with torch.no_grad():
            ref_c, ref_r = pair_fn(ref, prompts, chosen, rejected)
        c, r = pair_fn(policy, prompts, chosen, rejected)
        loss, _ = dpo_ce_loss(
            c.logps, r.logps, ref_c.logps, ref_r.logps, c.nll_sum, c.n_tokens, config
        )
        loss.backward()
        return loss.item()

    return step


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(args: argparse.Namespace) -> None:
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    policy, ref = build_models(args)
    (prompt_len,) = args.prompt_len  # the parent hands each worker one length
    pairs = make_pairs(args, prompt_len)
    if args.worker == "trl":
        step = trl_step_fn(args, policy, ref)
    else:
        step = ours_step_fn(policy, ref, shared=args.worker == "shared")

    # Warm-up on a short prompt: allocates grads and allocator pools at a fraction of the cost.
    loss = step(make_pairs(args, min(args.warmup_prompt, prompt_len)))
    policy.zero_grad(set_to_none=False)
    base_kb = _proc_status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step(pairs)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        policy.zero_grad(set_to_none=False)
    rows_tokens = {
        "trl": 2 * (prompt_len + args.answer_len),
        "unshared": 2 * (prompt_len + args.answer_len),
        "shared": prompt_len + 2 * args.answer_len,
    }[args.worker] * args.pairs
    print(
        json.dumps(
            {
                "variant": args.worker,
                "prompt": prompt_len,
                "step_s": statistics.median(times),
                "cpu_s": statistics.median(cpu_times),
                "peak_mb": (_proc_status_kb("VmHWM") - base_kb) / 1024,
                "base_mb": base_kb / 1024,
                "tokens": rows_tokens,
                "loss": loss,
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_worker(variant: str, prompt_len: int) -> dict:
    argv = [a for a in sys.argv[1:]]
    if "--prompt-len" in argv:  # hand the worker its one length
        i = argv.index("--prompt-len")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--prompt-len=")]
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--prompt-len", str(prompt_len), "--worker", variant],
        env=WORKER_ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_summary(args: argparse.Namespace, results: list[dict]) -> None:
    """One line per prompt length: shared vs each two-row layout, next to the token limit."""
    by = {(r["prompt"], r["variant"]): r for r in results}
    heads = [b for b in ("trl", "unshared") if any(k[1] == b for k in by)]
    if not any(k[1] == "shared" for k in by) or not heads:
        return
    cols = "".join(f" {'shared/' + b + ' cpu':>19} {'shared/' + b + ' mem':>19}" for b in heads)
    print(f"\n{'prompt':>7} {'answers':>7} {'limit':>6}{cols}")
    for prompt in args.prompt_len:
        limit = (prompt + 2 * args.answer_len) / (2 * prompt + 2 * args.answer_len)
        shared, line = by.get((prompt, "shared")), f"{prompt:>7} {args.answer_len:>7} {limit:>6.3f}"
        for b in heads:
            base = by.get((prompt, b))
            if shared and base:
                line += (f" {shared['cpu_s'] / base['cpu_s']:>19.3f}"
                         f" {shared['peak_mb'] / max(base['peak_mb'], 1e-9):>19.3f}")
        print(line)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants: {sorted(unknown)}")
    load_before = os.getloadavg()[0]  # 1-minute load of the host, before we add ours
    began = time.perf_counter()
    results = [run_worker(v, prompt) for prompt in args.prompt_len for v in variants]

    print(
        f"pairs/micro-batch {args.pairs}, answers {args.answer_len}, "
        f"Llama hidden {args.hidden} x {args.layers} layers, {args.heads} heads, "
        f"vocab {args.vocab}, float32, sdpa, {results[0]['threads']} threads, "
        f"median of {args.steps} steps after a {args.warmup_prompt}-token warm-up, host load "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after (other work on the host "
        f"skews times, not memory); {time.perf_counter() - began:.0f} s in all"
    )
    print(
        f"{'prompt':>7} {'variant':<10} {'tokens/step':>11} {'step s':>8} {'cpu s':>8} "
        f"{'step peak MB':>13} {'base RSS MB':>12} {'loss':>9}"
    )
    for r in results:
        print(
            f"{r['prompt']:>7} {r['variant']:<10} {r['tokens']:>11} {r['step_s']:>8.2f} "
            f"{r['cpu_s']:>8.2f} {r['peak_mb']:>13.0f} {r['base_mb']:>12.0f} {r['loss']:>9.5f}"
        )
    print_summary(args, results)


if __name__ == "__main__":
    main()
