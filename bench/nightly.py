"""Benchmark: the nightly Prefect flow end to end, then killed mid-scoring and resumed.

N demo prompts in moto's S3 (a subprocess), a Prefect test harness API, ``FakeOpenAI`` as judge
and embeddings (fixed latency L); the flow runs in a subprocess (offline policy, K answers).
Run A: flow wall time, per-stage busy time (union of a stage's task-run intervals from the
Prefect API), orchestration overhead, judge calls per prompt, calls/s against C/L.
Run B: a fresh lake, SIGKILL at ~50% of run A's judge calls, rerun: calls repeated (goal 0).

    python bench/nightly.py                        # defaults: 200 prompts x 10, L=0.05s, C=16
    python bench/nightly.py --prompts 8 --answers 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import start_moto  # noqa: E402
from tasks import storage  # noqa: E402
from tasks.demo_data import jsonl, make_prompts  # noqa: E402
from tasks.lake import Lake  # noqa: E402
from tasks.llm.cache import request_hash  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI, body_hash  # noqa: E402

CHAT = "/v1/chat/completions"
FACT = re.compile(r"\bin (\d{4}), [^.]*\.", re.I)
LIMITS = ("longreward-judge", "longreward-policy", "longreward-lake-writer")
ANSWERED = [0]  # chat requests the fake judge has answered (the responder runs at answer time)
LOCK = threading.Lock()
CHILD = """import json, sys, time
t0 = time.perf_counter()
from flows.nightly import nightly_refresh
t1 = time.perf_counter()
state = nightly_refresh(lake=sys.argv[1], source=sys.argv[2], batch_prompts=int(sys.argv[3]),
                        return_state=True)
t2 = time.perf_counter()
print("BENCH " + json.dumps({"flow_run_id": str(state.state_details.flow_run_id),
      "state": state.type.value, "import_s": t1 - t0, "call_s": t2 - t1,
      "counts": state.result(raise_on_failure=False)}, default=str), flush=True)
"""


def section(request: dict, tag: str) -> str:
    m = re.search(rf"<{tag}[^>]*>\n(.*?)\n</{tag}>", request["messages"][-1]["content"], re.S)
    return " ".join(m.group(1).split()) if m else ""


def responder(request: dict) -> str:
    """A judge that follows the output protocol, reading its task off the system prompt."""
    with LOCK:
        ANSWERED[0] += 1
    task = request["messages"][0]["content"].splitlines()[0].lstrip("# ").lower()
    answer = section(request, "answer")
    facts = [m.group(0) for m in FACT.finditer(answer)]
    if task == "rating helpfulness":
        return f"The answer gives {len(facts)} figures.\n[[{min(10, 3 + len(facts))}]]"
    if task == "rating logicality":
        return f"Reasoning is consistent.\n[[{5 + len(answer) % 5}]]"
    if task == "listing factual statements":
        return "\n".join(f"<statement>{s}</statement>" for s in facts[:4]) \
            or "No factual statements."
    if task == "grading support for a statement":
        statement, evidence = section(request, "statement"), section(request, "evidence")
        if statement.lower() in evidence.lower():
            return "Stated in the evidence.\n[[Fully supported]]"
        year = FACT.match(statement)
        if year and f"{year.group(1)}," in evidence:
            return "The year is covered, the figure differs.\n[[Partially supported]]"
        return "Not in the evidence.\n[[No support]]"
    if task == "extracting information relevant to a question":
        found = [m.group(0) for m in FACT.finditer(section(request, "chunk"))]
        return "\n".join(f"{i}. {s}" for i, s in enumerate(found, 1)) or "No relevant information"
    listed = re.search(r"<key_points>\n(.*?)\n</key_points>", request["messages"][-1]["content"],
                       re.S)
    points = re.findall(r"^\d+\. (.*)$", listed.group(1) if listed else "", re.M)
    covered = sum(p.lower() in answer.lower() for p in points)
    score = round(10 * covered / max(len(points), 1))
    return f"Covers {covered} of {len(points)} key points.\n[[{score}]]"


def client_hash(body: dict) -> str:
    """The call cache's key of a request, rebuilt from what reached the server."""
    if "messages" in body:
        return request_hash(body["model"], body["messages"], {
            "endpoint": "chat", "temperature": body["temperature"], "top_p": body["top_p"],
            "max_tokens": body["max_tokens"], "seed": body.get("seed"), "n": 1})
    return request_hash(body["model"], body["input"], {"endpoint": "embeddings"})


def flow_env(api: str, server: FakeOpenAI, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGREWARD_")}
    return {**env, "PREFECT_API_URL": api, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT),
            **{f"LONGREWARD_{k}": str(v) for k, v in {
                "JUDGE_BASE_URL": server.url, "JUDGE_MODEL": "bench-judge",
                "EMBEDDINGS_BASE_URL": server.url, "EMBEDDINGS_MODEL": "bench-embed",
                "POLICY_MODEL": "offline-policy", "SAMPLES_PER_PROMPT": args.answers,
                "PAIR_MIN_ANSWERS": min(5, args.answers),
                "JUDGE_CONCURRENCY": args.concurrency}.items()}}


def start_flow(lake: Path, env: dict, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(lake), "s3://bench/prompts",
                             str(args.batch_prompts)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=log.open("a"), text=True)


def finish_flow(proc: subprocess.Popen, log: Path) -> dict:
    out, _ = proc.communicate()
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), "BENCH {}")
    result = json.loads(line[6:])
    if proc.returncode or result.get("state") != "COMPLETED":
        sys.exit(f"flow failed (rc {proc.returncode}, state {result.get('state')}); log tail:\n"
                 + "\n".join(log.read_text().splitlines()[-30:]))
    return result


def by_kind(bodies: list[dict], pred) -> tuple[int, int]:
    """(chat requests, embedding requests) among ``bodies`` for which ``pred`` holds."""
    chat = sum(pred(b) for b in bodies if "messages" in b)
    return chat, sum(pred(b) for b in bodies if "messages" not in b)


def union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def stage_times(flow_run_id: str) -> tuple[float, dict[str, tuple[int, float, float]]]:
    """(flow run duration, {stage: (task runs, sum of durations, union of intervals)})."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
    with get_client(sync_client=True) as client:
        for _ in range(150):  # task-run states arrive as events: wait until all are recorded
            runs = client.read_task_runs(flow_run_filter=run_filter, limit=200,
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC)
            if runs and all(r.start_time and r.end_time for r in runs):
                break
            time.sleep(0.2)
        flow = client.read_flow_run(UUID(flow_run_id))
    stages: dict[str, list[tuple[float, float]]] = {}
    for r in sorted(runs, key=lambda r: r.start_time or r.expected_start_time):
        if r.start_time and r.end_time:
            stages.setdefault(r.name.rsplit("-", 1)[0], []).append(
                (r.start_time.timestamp(), r.end_time.timestamp()))
    duration = (flow.end_time - flow.start_time).total_seconds()
    return duration, {s: (len(iv), sum(b - a for a, b in iv), union(iv))
                      for s, iv in stages.items()}


def stale_slots() -> dict[str, tuple[int, int]]:
    """Slots of the flow's global concurrency limits still held (a killed run's); freed."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        held = {n: (lim.active_slots, lim.limit) for n in LIMITS
                for lim in [client.read_global_concurrency_limit_by_name(n)] if lim.active_slots}
        for name, (active, _) in held.items():
            client.release_concurrency_slots(names=[name], slots=active, occupancy_seconds=1.0)
    return held


def cached_hashes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as con:
        return dict(con.execute("SELECT request_hash, role FROM llm_cache"))


def rows(lake: Path) -> dict[str, int]:
    return {t: Lake(str(lake)).count(t) for t in ("responses", "judgments", "pairs")}


def run_a(api, server, args, root: Path) -> dict:
    server.reset_counts()
    started = time.perf_counter()
    proc = start_flow(root / "lake-a", flow_env(api, server, args), args, root / "a.log")
    result = finish_flow(proc, root / "a.log")
    process_s = time.perf_counter() - started
    duration, stages = stage_times(result["flow_run_id"])
    chat, embed = server.by_path[CHAT], server.requests_total - server.by_path[CHAT]
    busy = sum(u for _, _, u in stages.values())
    print("\n== run A: uninterrupted ==")
    print(f"child process wall      {process_s:8.1f} s  (interpreter + imports "
          f"{result['import_s']:.1f} s, nightly_refresh() call {result['call_s']:.1f} s)")
    print(f"flow run duration (API) {duration:8.1f} s  (Running -> Completed)")
    print(f"{'stage':<18}{'task runs':>10}{'sum (s)':>10}{'busy (s)':>10}  busy = union of "
          "the stage's task-run intervals")
    for name, (n, total, busy_s) in stages.items():
        print(f"{name:<18}{n:>10}{total:>10.1f}{busy_s:>10.1f}")
    over = duration - busy
    print(f"orchestration overhead  {over:8.1f} s  ({100 * over / duration:.1f}% of the flow run"
          "; flow duration - sum of stage busy times; includes the flow body's own work)")
    score_s = stages.get("score-batch", (0, 0.0, 0.0))[2]
    limit = args.concurrency / args.latency
    scored = result["counts"]["score"]
    print(f"judge chat calls        {chat:8d}    ({chat / args.prompts:.1f} per prompt; "
          f"{embed} embedding requests; judgments ok {sum(b['ok'] for b in scored)}, "
          f"failed {sum(b['failed'] for b in scored)})")
    print(f"judge calls/s           {chat / score_s:8.1f}    over the score stage's busy time, "
          f"vs C/L = {limit:.0f} (ratio {chat / score_s / limit:.2f}); "
          f"{chat / duration:.1f}/s over the flow run")
    seen: set[str] = set()
    dup_chat, dup_embed = by_kind(server.bodies, lambda b: body_hash(b) in seen
                                  or bool(seen.add(body_hash(b))))  # seen before; then remember
    print(f"server max in flight    {server.max_in_flight:8d}    (same body sent again within "
          f"the run: {dup_chat} chat, {dup_embed} embedding requests)")
    return {"chat": chat, "rows": rows(root / "lake-a")}


def run_b(api, server, args, root: Path, a: dict) -> None:
    server.reset_counts()
    ANSWERED[0] = 0
    lake, env, log = root / "lake-b", flow_env(api, server, args), root / "b.log"
    target = a["chat"] // 2
    started = time.perf_counter()
    proc = start_flow(lake, env, args, log)
    while ANSWERED[0] < target:
        if proc.poll() is not None:
            sys.exit(f"the flow ended before {target} judge answers; see {log}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    answered, arrived = ANSWERED[0], server.by_path[CHAT]
    proc.wait()
    killed_at = time.perf_counter() - started
    time.sleep(2 * args.latency + 0.5)  # let the server finish the requests of the dead client
    before = list(server.bodies)
    chat_before = sum("messages" in b for b in before)
    finished = cached_hashes(lake / "llm_cache.sqlite")
    seen = {body_hash(b) for b in before}
    stale = stale_slots()
    print("\n== run B: SIGKILL mid-scoring, then rerun ==")
    print(f"killed after            {killed_at:8.1f} s  ({answered} judge answers, target "
          f"{target} = 50% of run A's chat calls; {arrived - answered} chat calls in flight)")
    print(f"calls before the kill   {chat_before:8d}    chat ({len(before)} requests in all; "
          f"{sum(r == 'judge' for r in finished.values())} finished chat calls in the call cache)")
    if stale:
        print("stale concurrency slots " + ", ".join(f"{n} {s[0]}/{s[1]}" for n, s in
              stale.items()) + " still held by the killed run: the test harness server runs "
              "no lease repossessor, so the bench freed them (a real server frees them when "
              "their 60 s lease lapses; until then the rerun's batches wait for slots)")
    again = time.perf_counter()
    finish_flow(start_flow(lake, env, args, log), log)
    rerun_s = time.perf_counter() - again
    after = list(server.bodies)[len(before):]
    chat_after = sum("messages" in b for b in after)
    repeated = by_kind(after, lambda b: client_hash(b) in finished)
    in_flight = by_kind(after, lambda b: body_hash(b) in seen)
    print(f"rerun wall              {rerun_s:8.1f} s  (process, imports included)")
    print(f"calls in the rerun      {chat_after:8d}    chat ({len(after)} requests in all)")
    print(f"calls repeated          {repeated[0]:8d}    chat ({repeated[1]} embedding) rerun "
          "requests whose answer was in the call cache before the kill (goal 0)")
    print(f"in-flight repeats       {in_flight[0]:8d}    chat ({in_flight[1]} embedding) rerun "
          "requests whose body had reached the server before the kill (answer never stored)")
    total_b = chat_before + chat_after
    print(f"total chat calls        A {a['chat']}  B {total_b}  (B - A = {total_b - a['chat']})")
    b_rows = rows(lake)
    same = "equal" if b_rows == a["rows"] else "DIFFERENT"
    print(f"rows                    A {a['rows']}\n                        B {b_rows}  ({same})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200, help="N prompts (200)")
    parser.add_argument("--answers", type=int, default=10, help="K answers per prompt (10)")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency L, s (0.05)")
    parser.add_argument("--concurrency", type=int, default=16, help="judge concurrency C (16)")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per batch (16)")
    parser.add_argument("--context-words", type=int, default=800,
                        help="words per context (800 keeps a run tractable on 2 cores)")
    parser.add_argument("--per-object", type=int, default=50, help="prompts per S3 object (50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["PREFECT_HOME"] = str(root / "prefect")  # result storage of this bench only
        os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        moto, endpoint = start_moto()
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        try:
            client = storage.s3_client()
            client.create_bucket(Bucket="bench")
            prompts = make_prompts(args.prompts, seed=0, target_words=args.context_words)
            for i in range(0, len(prompts), args.per_object):
                client.put_object(Bucket="bench", Key=f"prompts/part-{i // args.per_object:05d}"
                                  ".jsonl", Body=jsonl([p.record() for p in
                                                        prompts[i:i + args.per_object]]))
            print(f"{args.prompts} prompts x {args.answers} answers, ~{args.context_words} words "
                  f"of context (kept short so a run is tractable on 2 cores); L={args.latency}s, "
                  f"C={args.concurrency}, {args.batch_prompts} prompts per batch", flush=True)
            from prefect.settings import PREFECT_API_URL
            from prefect.testing.utilities import prefect_test_harness

            with prefect_test_harness(server_startup_timeout=120), \
                    FakeOpenAI(responder, latency_s=args.latency) as server:
                api = PREFECT_API_URL.value()
                # the killed client's sockets reset: no traceback per connection on stderr
                server._httpd.handle_error = lambda request, address: None
                a = run_a(api, server, args, root)
                run_b(api, server, args, root, a)
        finally:
            moto.terminate()


if __name__ == "__main__":
    main()
