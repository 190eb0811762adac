"""DPO training end to end on a tiny local Llama and a dataset version published in a tmp lake."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks import storage
from tasks.lake import Lake
from tasks.publish import DatasetVersion, publish
from tasks.train.data import tokenize_pairs
from tasks.train.reference import REFERENCE_FILE, load_or_compute_reference, model_hash
from tasks.train.tiny import build_tiny_model
from tasks.train.trainer import TrainConfig, latest_checkpoint, main, train_dpo

WORDS = ["river", "bank", "loan", "rate", "city", "north", "storm", "ship", "harbor", "museum",
         "paper", "record"]


def conversational(prompt_id: str, context: str, query: str, chosen: str, rejected: str) -> dict:
    def answer(text: str) -> str:
        return json.dumps([{"role": "assistant", "content": text}])

    user = [{"role": "user", "content": f"{context}\n\n{query}"}]
    return {"prompt_id": prompt_id, "prompt": json.dumps(user), "chosen": answer(chosen),
            "rejected": answer(rejected), "format": "conversational", "chosen_reward": 8.0,
            "rejected_reward": 3.0, "margin": 5.0}


def pairs_table(n: int = 6) -> pa.Table:
    rows = []
    for i in range(n):
        context = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(20 + 15 * i))
        rows.append(conversational(f"p{i}", context, f"what is the {WORDS[i]}?",
                                   f"the {WORDS[i]} is near the {WORDS[i + 1]}.",
                                   f"no idea {WORDS[-i - 1]} " * (1 + i % 3)))
    return pa.Table.from_pylist(rows)


def crash_after(last: int):
    """An ``on_step`` that kills the run once step ``last`` (and its checkpoint) is done."""

    def on_step(step: int, metrics: dict) -> None:
        if step == last:
            raise KeyboardInterrupt(f"killed after step {step}")

    return on_step


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("base"), seed=0)


@pytest.fixture
def version(lake: Lake) -> DatasetVersion:
    return publish(lake, "preference", pairs_table(), ["prompt_id"], "cfg", {})[0]


def config(base_model: str, tmp_path: Path, name: str, **kwargs) -> TrainConfig:
    defaults = {"lr": 1e-3, "micro_batch_size": 2, "max_steps": 4, "schedule": "constant",
                "checkpoint_uri": str(tmp_path / "ckpt" / name), "model_version": name}
    return TrainConfig(base_model=base_model, **(defaults | kwargs))


def test_steps_lower_loss_and_record_the_model(lake: Lake, version: DatasetVersion,
                                               base_model: str, tmp_path: Path) -> None:
    cfg = config(base_model, tmp_path, "m-a", max_steps=8, max_prompt_tokens=64)
    result = train_dpo(lake, cfg, run_id="run-a")

    losses = [row["loss"] for row in result.history]
    assert [row["step"] for row in result.history] == list(range(1, 9))
    # Step 1: the policy IS the reference, so the stored reference log-probs line up with
    # the pairs exactly when the DPO part is log 2.
    assert result.history[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.history[-1]["rewards/margins"] > 0
    assert result.truncation["prompts_truncated"] >= 1 and result.truncation["pairs"] >= 1
    assert "deepspeed" not in sys.modules  # the CPU path never imports it

    (row,) = lake.read("models").to_pylist()
    assert row["model_version"] == "m-a" == result.model_version
    assert row["dataset_version"] == version.version == "v1"
    final = str(tmp_path / "ckpt" / "m-a" / "step-00000008")
    assert row["checkpoint_uri"] == result.checkpoint_uri == final
    assert row["run_id"] == "run-a" and row["base_model"] == base_model
    assert json.loads(row["hyperparameters"])["lr"] == 1e-3
    metrics = json.loads(row["metrics"])
    assert metrics["final"]["loss"] == losses[-1]
    assert metrics["truncation"] == result.truncation
    trained = AutoModelForCausalLM.from_pretrained(row["checkpoint_uri"])
    base = AutoModelForCausalLM.from_pretrained(base_model)
    moved = [not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(),
                                                     strict=True)]
    assert all(moved)
    assert AutoTokenizer.from_pretrained(row["checkpoint_uri"]).chat_template


def test_resume_continues_exactly(lake: Lake, version: DatasetVersion, tmp_path: Path) -> None:
    # Dropout draws from the RNG: the resumed steps match only if its state came back too.
    base_model = build_tiny_model(tmp_path / "dropout", attention_dropout=0.3)
    kwargs = {"checkpoint_every": 2, "schedule": "cosine", "warmup_steps": 1}
    straight = train_dpo(lake, config(base_model, tmp_path, "m-straight", **kwargs), "r1")

    cfg = config(base_model, tmp_path, "m-resumed", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(lake, cfg, "r2", on_step=crash_after(2))
    assert latest_checkpoint(cfg.checkpoint_uri)[0] == 2
    with pytest.raises(ValueError, match="resume"):
        train_dpo(lake, cfg, "r2")  # never silently restarts over existing checkpoints
    cfg.resume = True
    resumed = train_dpo(lake, cfg, "r2")

    assert resumed.reference_reused
    assert len(resumed.history) == 4  # steps 1-2 come back from the checkpoint
    for a, b in zip(straight.history[2:], resumed.history[2:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6)
        assert b["lr"] == pytest.approx(a["lr"], abs=1e-12)
    # Step 4's loss depends on step 3's update: optimizer moments and schedule were restored.
    assert resumed.history[3]["loss"] != resumed.history[2]["loss"]
    w1 = AutoModelForCausalLM.from_pretrained(straight.checkpoint_uri).state_dict()
    w2 = AutoModelForCausalLM.from_pretrained(resumed.checkpoint_uri).state_dict()
    for name, tensor in w1.items():
        torch.testing.assert_close(w2[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_reference_is_computed_once_and_reused(version: DatasetVersion, base_model: str,
                                               tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pairs, _ = tokenize_pairs(pa.table(pairs_table()), tokenizer)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))

    first = load_or_compute_reference(version, pairs, base_model, model, micro_batch_size=4)
    uri = storage.join(version.uri, REFERENCE_FILE)
    stamp = Path(uri).stat().st_mtime_ns
    assert not first.reused and first.uri == uri and len(calls) == 2  # 6 pairs, 4 per batch
    second = load_or_compute_reference(version, pairs, base_model, lambda: pytest.fail("loaded"))
    assert second.reused and len(calls) == 2 and Path(uri).stat().st_mtime_ns == stamp
    torch.testing.assert_close(second.chosen, first.chosen)
    torch.testing.assert_close(second.rejected, first.rejected)
    assert (first.chosen < 0).all() and (first.rejected < 0).all()
    meta = json.loads(pq.read_metadata(uri).metadata[b"longreward"])
    assert meta["base_model"] == base_model and meta["base_model_hash"] == model_hash(base_model)

    # Another base model (or other token ids) does not reuse the file.
    other = build_tiny_model(tmp_path / "other", seed=1)
    third = load_or_compute_reference(version, pairs, other,
                                      lambda: AutoModelForCausalLM.from_pretrained(other))
    assert not third.reused and not torch.allclose(third.chosen, first.chosen)
    cut, _ = tokenize_pairs(pa.table(pairs_table()), tokenizer, max_answer_tokens=2)
    assert not load_or_compute_reference(version, cut, other, model).reused


def test_truncation_keeps_the_right_end(base_model: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    table = pairs_table(3)
    (full, *_), stats = tokenize_pairs(table, tokenizer)
    assert stats.pairs == 0 and full.chosen_ids[-1] == tokenizer.eos_token_id
    n = len(full.prompt_ids)  # pair p0: the shortest prompt; p1, p2 are longer
    (end, *rest), end_stats = tokenize_pairs(table, tokenizer, max_prompt_tokens=n - 5)
    (start, *_), start_stats = tokenize_pairs(table, tokenizer, max_prompt_tokens=n - 5,
                                              truncate="keep_start")
    assert end.prompt_ids == full.prompt_ids[5:]  # the query and "assistant:" survive
    assert tokenizer.decode(end.prompt_ids).endswith("what is the river? assistant :")
    assert start.prompt_ids == full.prompt_ids[: n - 5]
    longer = [len(p.prompt_ids) for p in tokenize_pairs(table, tokenizer)[0][1:]]
    expected_cut = 5 + sum(length - (n - 5) for length in longer)
    for stats in (end_stats, start_stats):
        assert (stats.pairs, stats.prompts_truncated) == (3, 3)
        assert stats.prompt_tokens_cut == expected_cut and stats.answer_tokens_cut == 0
    assert all(len(p.prompt_ids) == n - 5 for p in rest)

    (short, *_), answer_stats = tokenize_pairs(table, tokenizer, max_answer_tokens=3)
    assert short.chosen_ids == full.chosen_ids[:3]  # keeps the start, loses the eos
    assert answer_stats.answers_truncated == 6 and answer_stats.prompts_truncated == 0

    plain = pa.Table.from_pylist([{"prompt_id": "x", "prompt": "a b c", "chosen": "d",
                                   "rejected": "e", "format": "plain"}])
    (pair,), _ = tokenize_pairs(plain, tokenizer)
    assert tokenizer.decode(pair.prompt_ids) == "a b c"
    assert pair.chosen_ids == [*tokenizer("d", add_special_tokens=False).input_ids,
                               tokenizer.eos_token_id]


def test_command_line(lake: Lake, version: DatasetVersion, base_model: str,
                      tmp_path: Path) -> None:
    result = main(["--lake", lake.root, "--run-id", "cli", "--base-model", base_model,
                   "--max-steps", "1", "--micro-batch-size", "3", "--no-shared-prefix",
                   "--gradient-checkpointing", "--checkpoint-uri", str(tmp_path / "c")])
    assert result.model_version == "m-cli" and len(result.history) == 1
    assert result.history[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert lake.read("models").column("checkpoint_uri").to_pylist() == [result.checkpoint_uri]


@pytest.mark.parametrize("bad", [{"beta": 0}, {"lr": 0}, {"micro_batch_size": 0},
                                 {"schedule": "linear"}, {"truncate": "middle"},
                                 {"max_prompt_tokens": 0}, {"deepspeed": "missing.json"}])
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(base_model="x", **bad)


def test_checkpoints_on_s3_resume(lake: Lake, version: DatasetVersion, base_model: str,
                                  bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/checkpoints/m-s3"
    cfg = config(base_model, tmp_path, "m-s3", checkpoint_uri=uri, max_steps=2,
                 checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_dpo(lake, cfg, "s3", on_step=crash_after(1))
    assert latest_checkpoint(uri) == (1, f"{uri}/step-00000001")
    cfg.resume = True
    result = train_dpo(lake, cfg, "s3")
    assert result.checkpoint_uri == f"{uri}/step-00000002" and len(result.history) == 2
    keys = {o["Key"] for o in storage.s3_client().list_objects_v2(
        Bucket=bucket, Prefix="checkpoints/m-s3/step-00000002/")["Contents"]}
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert {"model.safetensors", "config.json", "training_state.pt", "tokenizer.json",
            "COMPLETE"} <= names


def test_the_flow_launches_one_process_per_gpu_under_torchrun(lake: Lake, version: DatasetVersion,
                                                              base_model: str) -> None:
    """Two processes on CPU (gloo, DDP) stand in for a job's GPUs."""
    from flows.train import train_launched
    from tasks.config import load_settings

    settings = load_settings(None, lake=lake.root)
    summary = train_launched(settings, version.version, 2, base_model=base_model,
                             max_steps=2, lr=1e-3, micro_batch_size=1)
    row = lake.read("models").to_pylist()[0]
    hyper, metrics = json.loads(row["hyperparameters"]), json.loads(row["metrics"])
    assert (hyper["world_size"], hyper["global_batch"], metrics["steps"]) == (2, 2, 2)
    assert summary["model_version"] == row["model_version"] and summary["processes"] == 2
    trained = AutoModelForCausalLM.from_pretrained(row["checkpoint_uri"])
    base = AutoModelForCausalLM.from_pretrained(base_model)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(),
                                                     strict=True))
