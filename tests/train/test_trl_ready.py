"""A published dataset version is what TRL expects: it loads with ``datasets`` and trains with
TRL's own ``DPOTrainer`` unchanged, conversational (lists of messages) or plain."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
import torch

from tasks.lake import Lake
from tasks.pair import preference_table
from tasks.publish import publish

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _paired_lake(lake: Lake, n: int = 4) -> None:
    for i in range(n):
        pid = f"p{i}"
        lake.upsert("prompts", [{
            "prompt_id": pid, "source_uri": "s3://b/x", "source_etag": "e",
            "context": f"the harbor {i} opened in {1900 + i} after a storm.",
            "query": f"when did harbor {i} open?", "context_tokens": 10, "query_tokens": 5,
            "tokenizer": "t", "run_id": "r", "ingested_at": NOW}])
        lake.upsert("responses", [
            {"response_id": f"{pid}-{k}", "prompt_id": pid, "sample_index": k, "text": text,
             "policy_model": "m", "run_id": "r", "created_at": NOW}
            for k, text in enumerate([f"it opened in {1900 + i}.", "i do not know."])])
        lake.upsert("pairs", [{
            "prompt_id": pid, "chosen_response_id": f"{pid}-0", "rejected_response_id": f"{pid}-1",
            "chosen_reward": 9.0, "rejected_reward": 2.0, "margin": 7.0, "status": "paired",
            "skip_reason": None, "run_id": "run", "created_at": NOW}])


@pytest.mark.parametrize("style", ["conversational", "plain"])
def test_a_published_version_trains_with_trl_unchanged(lake, tmp_path, style):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    from tasks.train.tiny import build_tiny_model

    _paired_lake(lake)
    version, _ = publish(lake, "preference", preference_table(lake, style),
                         sort_by=["prompt_id"], config_hash="c", lineage={"run_id": "run"})
    data = load_dataset("parquet", data_files=version.data_uri, split="train")
    first = data[0]
    assert is_conversational(first) == (style == "conversational")
    if style == "conversational":
        assert first["prompt"][-1]["role"] == "user" and "harbor 0" in first["prompt"][-1][
            "content"]
        assert first["chosen"] == [{"role": "assistant", "content": "it opened in 1900."}]
    else:
        assert first["chosen"] == "it opened in 1900." and "harbor 0" in first["prompt"]

    path = build_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path)
    before = [p.detach().clone() for p in model.parameters()]
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                     max_steps=2, learning_rate=1e-2, beta=0.15, report_to=[], logging_steps=1,
                     save_strategy="no", use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(path))
    if style == "conversational":  # TRL rendered the messages with the chat template itself
        ids = trainer.train_dataset[0]["prompt_ids"]
        assert "user :" in trainer.processing_class.decode(ids)
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
