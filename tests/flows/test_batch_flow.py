"""The nightly flow with batch judging handed over: the first night submits and ends without
pairs, the second collects the same batch (Prefect's task cache does not hide it) and
publishes."""

from __future__ import annotations

from flows.nightly import nightly_refresh
from tasks.lake import Lake
from tests.fakes.batch_server import FakeBatchOpenAI
from tests.flows.test_nightly import _demo_source, judge_reply


def test_a_handed_over_night_publishes_nothing_and_the_next_night_collects(
        prefect_api, s3_endpoint, tmp_path):
    src, lake = _demo_source(2), str(tmp_path / "lake")
    with FakeBatchOpenAI(judge_reply, polls=10_000) as judge:
        night = {"judge_base_url": judge.url, "judge_model": "scripted",
                 "embeddings_base_url": judge.url, "embeddings_model": "scripted-embed",
                 "samples_per_prompt": 4, "pair_min_answers": 4, "judge_mode": "batch",
                 "batch_wait": "handover", "batch_idle_s": 0.2, "batch_poll_s": 0.01,
                 "batch_poll_max_s": 0.02}
        first = nightly_refresh(lake=lake, source=src, overrides=night)
        assert [b["handed_over"] for b in first["score"]] == [2]   # one task, both prompts
        assert first["publish"]["dataset_version"] is None
        assert Lake(lake).count("judgments") == 0
        before = len(judge.submitted)
        carried = {k for b in judge.submitted for k in b}
        judge.finish()
        judge.polls = 1
        second = nightly_refresh(lake=lake, source=src,
                                 overrides={**night, "batch_handover_after_s": 60})
        assert not carried & {k for b in judge.submitted[before:] for k in b}  # collected
    assert second["ingest"]["prompts"] == 0 and second["sample"] == []
    assert [(b["handed_over"], b["ok"] + b["failed"]) for b in second["score"]] == [(0, 32)]
    assert second["publish"]["dataset_version"] == "v1"
