"""Benchmark: the real scoring stage against a scripted OpenAI-compatible judge on loopback.

N demo prompts x K answers (facts of the document, some dropped or altered) are written to a
temp lake and scored by ``score_pending`` through an ``LLMClient`` judge and an
``EndpointEmbedder`` (fresh call cache, so every call is real) against ``FakeOpenAI`` with a
fixed latency L. Prints wall time, calls/s against the C/L ceiling, calls and tokens per prompt;
then the same for a NAIVE design (``score_prompt`` once per answer: the context re-embedded and
the key points re-extracted per answer), and a second pass of ours over the same cache.

    python bench/judge.py                        # defaults: 8 prompts x 10, L=0.2s, C=16
    python bench/judge.py --prompts 2 --latency 0.05
    python bench/judge.py --mode batch           # online vs Batch API judging and sampling
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks import catalog  # noqa: E402
from tasks.demo_data import DemoPrompt, make_prompts  # noqa: E402
from tasks.embeddings import EndpointEmbedder  # noqa: E402
from tasks.lake import Lake  # noqa: E402
from tasks.llm.client import LLMClient  # noqa: E402
from tasks.score.judge import load_prompt  # noqa: E402
from tasks.score.stage import ScoreOptions, score_pending, score_prompt  # noqa: E402
from tests.fakes.batch_server import FakeBatchOpenAI  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FACT = re.compile(r"In (\d{4}), [^.]*\.")
EXTRACT_SYSTEM = load_prompt("completeness_extract")[0]
REPLIES: list[float] = []  # when the server answered each chat request (perf_counter)


def section(request: dict, tag: str) -> str:
    m = re.search(rf"<{tag}[^>]*>\n(.*?)\n</{tag}>", request["messages"][-1]["content"], re.S)
    return m.group(1) if m else ""


def responder(request: dict) -> str:
    """A judge that follows the output protocol, reading the task off the system prompt title."""
    REPLIES.append(time.perf_counter())
    task = request["messages"][0]["content"].splitlines()[0].lstrip("# ").lower()
    answer = section(request, "answer")
    facts = FACT.findall(answer)
    if task == "rating helpfulness":
        return f"The answer addresses the question with {len(facts)} figures.\n[[{3 + len(facts)}]]"
    if task == "rating logicality":
        return "Logical errors: none found. The reasoning is consistent.\n[[8]]"
    if task == "listing factual statements":
        found = [m.group(0) for m in FACT.finditer(answer)]
        return "\n".join(f"<statement>{s}</statement>" for s in found) or "No statements."
    if task == "grading support for a statement":
        statement, evidence = section(request, "statement"), section(request, "evidence")
        evidence = " ".join(evidence.split())
        if statement in evidence:
            return "The evidence states this exactly.\n[[Fully supported]]"
        year = FACT.match(statement)
        if year and f"In {year.group(1)}," in evidence:
            return "The year is covered but the figure differs.\n[[Partially supported]]"
        return "Nothing in the evidence says this.\n[[No support]]"
    if task == "extracting information relevant to a question":
        found = [m.group(0) for m in FACT.finditer(" ".join(section(request, "chunk").split()))]
        return "\n".join(f"{i}. {s}" for i, s in enumerate(found, 1)) or "No relevant information"
    if task == "rating completeness":
        points = re.findall(r"^\d+\. (.*)$", section(request, "key_points"), re.M)
        covered = sum(p in answer for p in points)
        share = 10 * covered / max(1, len(points))
        return f"Covers {covered} of {len(points)} key points.\n[[{share:g}]]"
    raise ValueError(f"unknown judge task {task!r}")


def answers(prompt: DemoPrompt, k: int, rng: random.Random) -> list[str]:
    """K answers built from the document's facts: some dropped, some figures altered."""
    out = []
    for _ in range(k):
        kept = [f for f in prompt.facts if rng.random() > 0.3]
        kept = [re.sub(r"recorded ([\d,]+)", lambda m: f"recorded {rng.randint(1, 99999):,}", f)
                if rng.random() < 0.25 else f for f in kept]
        out.append("Here is what the report says. " + " ".join(kept)
                   + " In short, the figures moved for several reasons.")
    return out


def prompt_rows(prompts: list[DemoPrompt]) -> list[dict]:
    return [{"prompt_id": p.id, "source_uri": "bench://judge", "source_etag": "e",
             "context": p.context, "query": p.query, "context_tokens": 0, "query_tokens": 0,
             "tokenizer": "t", "run_id": "bench", "ingested_at": NOW} for p in prompts]


def fill_lake(root: Path, prompts: list[DemoPrompt], k: int, seed: int) -> Lake:
    lake, rng = Lake(str(root)), random.Random(seed)
    lake.upsert("prompts", prompt_rows(prompts))
    lake.upsert("responses", [{
        "response_id": f"{p.id}-{i}", "prompt_id": p.id, "sample_index": i, "text": text,
        "policy_model": "m", "run_id": "bench", "created_at": NOW}
        for p in prompts for i, text in enumerate(answers(p, k, rng))])
    return lake


class PerAnswer:
    """The naive design's judge: its key-point extraction is private to one answer (tagged
    apart), so neither the call cache nor in-flight coalescing shares it across answers."""

    def __init__(self, client: LLMClient, tag: int):
        self.client, self.tag, self.model = client, tag, client.model

    async def chat(self, messages, *, temperature, top_p, max_tokens, attempt=0, purpose=None):
        tag = self.tag if messages[0]["content"] == EXTRACT_SYSTEM else None
        return await self.client.chat(messages, temperature=temperature, top_p=top_p,
                                      max_tokens=max_tokens, attempt=attempt, sample_index=tag,
                                      purpose=purpose)


def clients(server: FakeOpenAI, cache: Path | None, embed_cache: Path | None,
            c: int) -> tuple[LLMClient, LLMClient]:
    judge = LLMClient(base_url=server.url, model="judge", cache=cache, concurrency=c)
    embed = LLMClient(base_url=server.url, model="embed", role="embeddings", cache=embed_cache,
                      concurrency=c)
    return judge, embed


def counts(server: FakeOpenAI, judge: LLMClient, started: float, n: int, latency: float) -> dict:
    wall = time.perf_counter() - started
    chat = [b for b in server.bodies if "messages" in b]
    embeds = [b for b in server.bodies if "input" in b]
    paid = [r for r in judge.call_log if not r["cached"]]
    return {"wall": wall, "chat": len(chat), "embed": len(embeds), "max_in_flight":
            server.max_in_flight, "extract": sum(b["messages"][0]["content"] == EXTRACT_SYSTEM
                                                 for b in chat) / n,
            "texts": sum(len(b["input"]) for b in embeds) / n,
            "tok_in": sum(r["tokens_in"] or 0 for r in paid) / n,
            "tok_out": sum(r["tokens_out"] or 0 for r in paid) / n,
            "first": (min(REPLIES) - latency - started) if REPLIES else float("nan")}


async def ours(lake: Lake, server: FakeOpenAI, cache: Path, args, n: int) -> tuple[dict, object]:
    server.reset_counts()
    REPLIES.clear()
    judge, embed = clients(server, cache, cache, args.concurrency)
    options = ScoreOptions(prompts_in_flight=n)
    started = time.perf_counter()
    report = await score_pending(lake, judge, EndpointEmbedder(embed), options, "bench")
    result = counts(server, judge, started, n, args.latency)
    result |= {"hits": judge.cache_hits + embed.cache_hits, "coalesced": judge.coalesced}
    await judge.aclose()
    await embed.aclose()
    return result, report


async def naive(lake: Lake, server: FakeOpenAI, cache: Path, args, n: int) -> dict:
    """score_prompt once per answer, known_key_points=None: re-segment, re-embed, re-extract.
    The embedder has no cache (an identical context batch would be served from it)."""
    server.reset_counts()
    REPLIES.clear()
    judge, embed = clients(server, cache, None, args.concurrency)
    embedder, options = EndpointEmbedder(embed), ScoreOptions()
    prompts = {r["prompt_id"]: r for r in lake.read("prompts").to_pylist()}
    responses = lake.read("responses").to_pylist()
    started = time.perf_counter()
    await asyncio.gather(*(score_prompt(PerAnswer(judge, r["sample_index"]), embedder,
                                        prompts[r["prompt_id"]], [r], options, "naive")
                           for r in responses))
    result = counts(server, judge, started, n, args.latency)
    await judge.aclose()
    await embed.aclose()
    return result


def show(name: str, r: dict, args) -> None:
    limit = args.concurrency / args.latency if args.latency else float("inf")
    rate, busy = r["chat"] / r["wall"], r["chat"] / (r["wall"] - r["first"])
    print(f"[{name}] wall {r['wall']:.2f}s; judge chat calls {r['chat']}, embedding calls "
          f"{r['embed']}; server max in flight {r['max_in_flight']}")
    print(f"[{name}] judge calls/s {rate:.1f} vs C/L = {limit:.1f} (ratio {rate / limit:.2f}); "
          f"all requests/s {(r['chat'] + r['embed']) / r['wall']:.1f}")
    print(f"[{name}] first judge request {r['first']:.2f}s after start; from then on "
          f"{busy:.1f} judge calls/s (ratio {busy / limit:.2f})")
    print(f"[{name}] per prompt: judge calls {r['chat'] / args.prompts:.1f}, prompt tokens "
          f"{r['tok_in']:.0f}, completion tokens {r['tok_out']:.0f}, extraction calls "
          f"{r['extract']:.1f}, embedding requests {r['embed'] / args.prompts:.1f}, "
          f"embedded texts {r['texts']:.1f}")


async def judged(lake: Lake, server: FakeOpenAI, cache: Path, args, batch: bool) -> dict:
    """Score the lake online or through the Batch API (fresh cache); the judge's figures."""
    from tasks.llm.batch import BatchJudge

    client = LLMClient(base_url=server.url, model="judge", cache=cache,
                       concurrency=args.concurrency, cost_per_mtok_in=args.price_in,
                       cost_per_mtok_out=args.price_out)
    judge = BatchJudge(client, lake, idle_s=0.2, poll_s=0.05, poll_max_s=0.2) if batch \
        else client
    embed = LLMClient(base_url=server.url, model="embed", role="embeddings", cache=cache)
    started = time.perf_counter()
    await score_pending(lake, judge, EndpointEmbedder(embed), ScoreOptions(
        prompts_in_flight=args.prompts), "bench")
    wall = time.perf_counter() - started
    rows = judge.drain_call_log()
    lake.upsert("llm_calls", rows)
    stats = judge.stats()
    await judge.aclose()
    await embed.aclose()
    rewards = dict(catalog.connect(lake).execute(
        "SELECT response_id, reward FROM rewards").fetchall())
    paid = [r for r in rows if not r["cached"]]
    return {"calls": len(rows), "paid": len(paid), "wall": wall, "rewards": rewards,
            "tok_in": sum(r["tokens_in"] or 0 for r in paid),
            "tok_out": sum(r["tokens_out"] or 0 for r in paid),
            "cost": sum(r["cost_usd"] or 0.0 for r in rows),
            "batches": stats.get("batches_submitted", 0)}


async def sampled(root: Path, prompts: list[DemoPrompt], server: FakeOpenAI, args,
                  batch: bool) -> dict:
    """Sample K answers per prompt online or through the Batch API (fresh lake and cache)."""
    from tasks.llm.batch import BatchCaller
    from tasks.sample.policies import EndpointPolicy, SamplingParams
    from tasks.sample.stage import sample_responses

    lake = Lake(str(root))
    lake.upsert("prompts", prompt_rows(prompts))
    client = LLMClient(base_url=server.url, model="policy", role="policy",
                       cache=root / "calls.sqlite", concurrency=args.concurrency,
                       cost_per_mtok_in=args.price_in, cost_per_mtok_out=args.price_out)
    caller = BatchCaller(client, lake, idle_s=0.2, poll_s=0.05, poll_max_s=0.2) if batch \
        else client
    started = time.perf_counter()
    await sample_responses(lake, EndpointPolicy(caller), prompt_rows(prompts), args.answers,
                           SamplingParams(), "bench", concurrency=len(prompts))
    wall = time.perf_counter() - started
    await caller.aclose()
    calls = lake.read("llm_calls").to_pylist()
    return {"wall": wall, "cost": sum(c["cost_usd"] or 0.0 for c in calls),
            "calls": len(calls), "texts": {r["response_id"]: r["text"]
                                           for r in lake.read("responses").to_pylist()}}


def compare_policy_modes(args, prompts: list[DemoPrompt]) -> None:
    def policy(request: dict) -> str:
        return f"Answer drawn with seed {request['seed']}. " + "The figures moved. " * 60

    with tempfile.TemporaryDirectory() as tmp, FakeBatchOpenAI(
            policy, latency_s=args.latency, polls=2) as server:
        out = {mode: asyncio.run(sampled(Path(tmp) / mode, prompts, server, args,
                                         mode == "batch")) for mode in ("online", "batch")}
        sizes = [len(b) for b in server.submitted]
    on, off = out["online"], out["batch"]
    n = len(prompts)
    print(f"\n{'sampling, per prompt':<26}{'online':>12}{'batch':>12}{'batch/online':>14}")
    for name, key, scale in (("policy calls (llm_calls)", "calls", n), ("cost (USD)", "cost", n),
                             ("wall time (s, total)", "wall", 1)):
        a, b = on[key] / scale, off[key] / scale
        print(f"{name:<26}{a:>12.4g}{b:>12.4g}{b / a if a else float('nan'):>14.2f}")
    print(f"policy batches submitted: {len(sizes)} (calls each: {sizes}); responses identical: "
          f"{on['texts'] == off['texts']} ({len(on['texts'])} answers)")


def compare_modes(args, prompts: list[DemoPrompt]) -> None:
    n = args.prompts
    with tempfile.TemporaryDirectory() as tmp, FakeBatchOpenAI(
            responder, latency_s=args.latency, polls=2) as server:
        root = Path(tmp)
        print(f"{n} prompts x {args.answers} answers, ~{args.context_words} words of context; "
              f"price ${args.price_in}/${args.price_out} per M tokens in/out", flush=True)
        out = {mode: asyncio.run(judged(fill_lake(root / mode, prompts, args.answers, args.seed),
                                        server, root / f"{mode}.sqlite", args, mode == "batch"))
               for mode in ("online", "batch")}
        sizes = [len(b) for b in server.submitted]
    on, off = out["online"], out["batch"]
    print(f"\n{'per prompt':<26}{'online':>12}{'batch':>12}{'batch/online':>14}")
    for name, key, scale in (("judge calls (llm_calls)", "calls", n), ("paid calls", "paid", n),
                             ("prompt tokens", "tok_in", n), ("completion tokens", "tok_out", n),
                             ("cost (USD)", "cost", n), ("wall time (s, total)", "wall", 1)):
        a, b = on[key] / scale, off[key] / scale
        print(f"{name:<26}{a:>12.4g}{b:>12.4g}{b / a if a else float('nan'):>14.2f}")
    print(f"batches submitted: {off['batches']} (calls each: {sizes}); rewards identical: "
          f"{on['rewards'] == off['rewards']} ({len(on['rewards'])} answers)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="N prompts (default 8)")
    parser.add_argument("--answers", type=int, default=10, help="answers per prompt (10)")
    parser.add_argument("--latency", type=float, default=0.2, help="server latency L, s (0.2)")
    parser.add_argument("--concurrency", type=int, default=16, help="judge concurrency C (16)")
    parser.add_argument("--context-words", type=int, default=6000,
                        help="words per context (6000: ~7k tokens, 2 extraction chunks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="only measure ours")
    parser.add_argument("--mode", choices=("online", "batch"), default="online",
                        help="batch: compare online and Batch API judging instead")
    parser.add_argument("--price-in", type=float, default=2.0, help="USD / M prompt tokens")
    parser.add_argument("--price-out", type=float, default=8.0, help="USD / M output tokens")
    args = parser.parse_args()
    n = args.prompts
    prompts = make_prompts(n, args.seed, args.context_words)
    if args.mode == "batch":
        compare_modes(args, prompts)
        compare_policy_modes(args, prompts)
        return
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(responder,
                                                          latency_s=args.latency) as server:
        root = Path(tmp)
        print(f"{n} prompts x {args.answers} answers, ~{args.context_words} words of context; "
              f"L={args.latency}s, C={args.concurrency}", flush=True)
        lake = fill_lake(root / "lake", prompts, args.answers, args.seed)
        mine, report = asyncio.run(ours(lake, server, root / "cache.sqlite", args, n))
        print(f"score_pending: {report.summary()}")
        show("ours", mine, args)
        again, _ = asyncio.run(ours(fill_lake(root / "lake2", prompts, args.answers, args.seed),
                                    server, root / "cache.sqlite", args, n))
        print(f"[ours, 2nd pass, same cache, fresh lake] {server.requests_total} requests "
              f"({again['hits']} cache hits, {again['coalesced']} coalesced), "
              f"wall {again['wall']:.2f}s")
        if args.skip_naive:
            return
        slow = asyncio.run(naive(lake, server, root / "naive.sqlite", args, n))
        show("naive", slow, args)
    print(f"\n{'per prompt':<24}{'ours':>10}{'naive':>10}{'naive/ours':>12}")
    rows = [("judge chat calls", mine["chat"] / n, slow["chat"] / n),
            ("extraction calls", mine["extract"], slow["extract"]),
            ("embedding requests", mine["embed"] / n, slow["embed"] / n),
            ("embedded texts", mine["texts"], slow["texts"]),
            ("prompt tokens", mine["tok_in"], slow["tok_in"]),
            ("completion tokens", mine["tok_out"], slow["tok_out"]),
            ("wall time (s, total)", mine["wall"], slow["wall"])]
    for name, a, b in rows:
        print(f"{name:<24}{a:>10.1f}{b:>10.1f}{b / a if a else float('nan'):>12.2f}")


if __name__ == "__main__":
    main()
