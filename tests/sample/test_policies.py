from __future__ import annotations

import asyncio
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tasks.config import Settings
from tasks.demo_data import make_prompt
from tasks.llm import LLMClient
from tasks.sample.layout import build_messages
from tasks.sample.offline import STYLES, OfflinePolicy
from tasks.sample.policies import (
    EndpointPolicy,
    Policy,
    SamplingParams,
    TransformersPolicy,
    VLLMPolicy,
    derive_seed,
    policy_from_settings,
)
from tests.fakes import FakeOpenAI

PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0)


def offline_samples(index: int, k: int = 10, seed: int = 0, params: SamplingParams = PARAMS):
    prompt = make_prompt(index, target_words=400)
    messages = build_messages(prompt.context, prompt.query)
    samples = asyncio.run(OfflinePolicy(seed).generate(prompt.id, messages, k, params))
    return prompt, samples


# -- SamplingParams ----------------------------------------------------------------------------

def test_params_json_is_canonical_and_validated():
    assert SamplingParams().as_json() == \
        '{"max_new_tokens":1024,"seed":0,"temperature":1.0,"top_p":1.0}'
    assert SamplingParams(temperature=1).as_json() == SamplingParams(temperature=1.0).as_json()
    for bad in ({"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "p", 1) == derive_seed(0, "p", 1)
    seeds = {derive_seed(0, "p", i) for i in range(10)} | {derive_seed(1, "p", 0)}
    assert len(seeds) == 11 and all(0 <= s < 2**31 for s in seeds)


# -- OfflinePolicy -----------------------------------------------------------------------------

def test_offline_policy_is_deterministic_for_a_seed():
    _, first = offline_samples(0)
    _, again = offline_samples(0)
    _, other_seed = offline_samples(0, seed=1)
    assert first == again
    assert [s.text for s in first] != [s.text for s in other_seed]


def test_offline_k10_has_varied_styles_and_texts():
    for index in range(4):
        _, samples = offline_samples(index)
        assert [s.sample_index for s in samples] == list(range(10))
        styles = {s.meta["style"] for s in samples}
        assert styles <= set(STYLES) and len(styles) >= 3, styles
        assert len({s.text for s in samples}) >= 6
        assert all(s.text and s.finish_reason == "stop" and s.tokens is None for s in samples)


def styled(style: str):
    """The first offline sample of ``style`` over a few demo prompts."""
    for index in range(20):
        prompt, samples = offline_samples(index)
        for sample in samples:
            if sample.meta["style"] == style:
                return prompt, sample
    raise AssertionError(f"no {style} sample")


def test_good_answer_states_facts_from_the_context():
    prompt, sample = styled("good")
    assert sample.text.startswith(("According to", "The document", "Based on", "The report"))
    facts_quoted = [f for f in prompt.facts if f[0].lower() + f[1:] in sample.text]
    assert len(facts_quoted) >= 3
    numbers = re.findall(r"\d[\d,]*\d", sample.text)
    assert numbers and all(n in prompt.context for n in numbers)


def test_hallucinated_answer_has_a_figure_or_name_not_in_the_context():
    prompt, sample = styled("hallucinated")
    corrupted = sample.meta["corrupted"]
    assert corrupted["to"] in sample.text
    assert not re.search(rf"(?<![\d,]){re.escape(corrupted['to'])}(?![\d,])", prompt.context)


def test_off_topic_answer_quotes_no_fact_and_contradictory_restates_a_figure_otherwise():
    prompt, off = styled("off_topic")
    assert not any(f[20:60] in off.text for f in prompt.facts)
    prompt, contra = styled("contradictory")
    changed = contra.meta["contradicts"]
    head, _, restated = contra.text.rpartition(changed["to"])
    assert changed["from"] in head and restated          # the answer gave the figure first
    assert not re.search(rf"(?<![\d,]){re.escape(changed['to'])}(?![\d,])", prompt.context)


def test_partial_answer_is_shorter_than_good_ones():
    _, partial = styled("partial")
    _, good = styled("good")
    assert 1 <= partial.text.count(". ") + 1 <= 2 < good.text.count(". ") + 1


def test_offline_respects_indices_and_max_new_tokens():
    prompt = make_prompt(0, target_words=300)
    messages = build_messages(prompt.context, prompt.query)
    policy = OfflinePolicy()
    every = asyncio.run(policy.generate(prompt.id, messages, 6, PARAMS))
    some = asyncio.run(policy.generate(prompt.id, messages, 6, PARAMS, indices=[4, 1]))
    assert some == [every[1], every[4]]
    short = asyncio.run(policy.generate(prompt.id, messages, 3, SamplingParams(max_new_tokens=5)))
    assert all(len(s.text.split()) <= 5 and s.finish_reason == "length" for s in short)


def test_offline_handles_an_empty_context():
    samples = asyncio.run(OfflinePolicy().generate("p", [{"role": "user", "content": ""}], 3,
                                                   PARAMS))
    assert len(samples) == 3 and all(s.text for s in samples)


# -- TransformersPolicy on a tiny model built here ---------------------------------------------

CORPUS = ["the harbour recorded more ship arrivals in the dry summer",
          "the director said the new contract changed the figures",
          "what happened to the number of arrivals and why"]


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(CORPUS, trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]",
                                        unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")
    config = LlamaConfig(vocab_size=raw.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def tf_generate(policy: TransformersPolicy, k: int, params: SamplingParams, **kw):
    messages = build_messages(" ".join(CORPUS[:2]) * 3, CORPUS[2])
    return asyncio.run(policy.generate("prompt-1", messages, k, params, **kw))


def test_transformers_policy_returns_k_new_token_answers_reproducibly(tiny):
    model, tokenizer = tiny
    policy = TransformersPolicy(model, tokenizer, name="tiny-llama")
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    samples = tf_generate(policy, 3, params)
    assert [s.sample_index for s in samples] == [0, 1, 2]
    # the prompt has 60+ words: an answer holding it would be far longer than 6 new tokens
    assert all(s.tokens is not None and 1 <= s.tokens <= 6 for s in samples)
    assert all(len(s.text.split()) <= 6 for s in samples)
    assert len({s.text for s in samples}) > 1  # sampled, not greedy
    assert tf_generate(policy, 3, params) == samples  # same seed, same answers
    assert tf_generate(policy, 3, SamplingParams(max_new_tokens=6, seed=4)) != samples
    assert tf_generate(policy, 3, params, indices=[2]) == [samples[2]]


def test_transformers_greedy_gives_k_copies_and_chat_template_is_applied(tiny):
    model, tokenizer = tiny
    policy = TransformersPolicy(model, tokenizer)
    samples = tf_generate(policy, 2, SamplingParams(temperature=0.0, max_new_tokens=4))
    assert samples[0].text == samples[1].text and samples[1].sample_index == 1

    plain_ids, _ = policy._encode([{"role": "user", "content": "the harbour"}])
    tokenizer.chat_template = "[BOS] {% for m in messages %}{{ m['content'] }} {% endfor %}"
    try:
        chat_ids, _ = policy._encode([{"role": "user", "content": "the harbour"}])
    finally:
        tokenizer.chat_template = None
    assert chat_ids[0].tolist() == [tokenizer.bos_token_id] + plain_ids[0].tolist()


# -- EndpointPolicy against a loopback OpenAI-compatible server ---------------------------------

@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(lambda req: f"answer drawn with seed {req.get('seed')}") as fake:
        yield fake


def endpoint_samples(server: FakeOpenAI, tmp_path, k: int, **kw):
    client = LLMClient(base_url=server.url, model="policy-m", role="policy",
                       cache=tmp_path / "cache.sqlite", max_retries=0)
    policy = EndpointPolicy(client)

    async def main():
        async with client:
            return await policy.generate("prompt-1", [{"role": "user", "content": "Q?"}], k,
                                         SamplingParams(max_new_tokens=32, seed=7), **kw)
    return asyncio.run(main()), policy


def test_endpoint_policy_makes_k_distinct_calls_then_replays_from_cache(server, tmp_path):
    samples, policy = endpoint_samples(server, tmp_path, 4)
    assert server.requests_total == 4 and len(server.by_body) == 4
    seeds = [body["seed"] for body in server.bodies]
    assert len(set(seeds)) == 4
    assert sorted(seeds) == sorted(derive_seed(7, "prompt-1", i) for i in range(4))
    assert all(b["max_tokens"] == 32 and b["temperature"] == 1.0 for b in server.bodies)
    assert [s.sample_index for s in samples] == [0, 1, 2, 3]
    assert [s.text for s in samples] == \
        [f"answer drawn with seed {derive_seed(7, 'prompt-1', i)}" for i in range(4)]
    assert all(s.tokens == 5 and s.finish_reason == "stop" for s in samples)
    assert len(policy.drain_call_log()) == 4

    server.reset_counts()
    again, _ = endpoint_samples(server, tmp_path, 4)
    assert server.requests_total == 0 and again == samples


def test_endpoint_policy_asks_only_for_requested_indices(server, tmp_path):
    samples, _ = endpoint_samples(server, tmp_path, 10, indices=[9, 3])
    assert [s.sample_index for s in samples] == [3, 9] and server.requests_total == 2


# -- VLLMPolicy: only its plumbing, against a stand-in module (no GPU, no vllm here) ----------

@dataclass
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str


class _FakeEngine:
    calls: list[tuple[list, list]] = []

    def __init__(self, model: str, **kwargs):
        self.model, self.kwargs = model, kwargs

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        _FakeEngine.calls.append((messages, sampling_params))
        return [types.SimpleNamespace(outputs=[
            _Completion(i, f"{conv[-1]['content']}#{i}", [1] * (i + 1), "stop")
            for i in range(sp.n)]) for conv, sp in zip(messages, sampling_params, strict=True)]


def test_vllm_policy_batches_concurrent_prompts_into_one_chat_call(monkeypatch):
    fake = types.SimpleNamespace(LLM=_FakeEngine,
                                 SamplingParams=lambda **kw: types.SimpleNamespace(**kw))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    _FakeEngine.calls = []
    policy = VLLMPolicy("some/model", gpu_memory_utilization=0.5)
    assert policy.engine.kwargs == {"gpu_memory_utilization": 0.5}
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=64, seed=1)

    async def main():
        return await asyncio.gather(*(
            policy.generate(f"p{j}", [{"role": "user", "content": f"q{j}"}], 3, params)
            for j in range(4)))

    results = asyncio.run(main())
    assert len(_FakeEngine.calls) == 1 and len(_FakeEngine.calls[0][0]) == 4
    sent = _FakeEngine.calls[0][1][2]
    assert (sent.n, sent.temperature, sent.top_p, sent.max_tokens, sent.seed) == \
        (3, 0.8, 0.9, 64, derive_seed(1, "p2"))
    assert [s.text for s in results[2]] == ["q2#0", "q2#1", "q2#2"]
    assert [s.tokens for s in results[2]] == [1, 2, 3]


def test_vllm_policy_without_vllm_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="policy_base_url"):
        VLLMPolicy("some/model")


# -- policy_from_settings ----------------------------------------------------------------------

def test_policy_from_settings_picks_the_backend(tmp_path, tiny, monkeypatch):
    offline = policy_from_settings(Settings(lake=str(tmp_path / "lake")))
    assert isinstance(offline, OfflinePolicy) and offline.model == "offline-policy"
    assert isinstance(offline, Policy)

    endpoint = policy_from_settings(Settings(lake=str(tmp_path / "lake"),
                                             policy_base_url="http://127.0.0.1:9/v1",
                                             policy_model="served-m"), run_id="r1")
    assert isinstance(endpoint, EndpointPolicy) and endpoint.model == "served-m"
    assert endpoint.client.role == "policy" and endpoint.client.run_id == "r1"

    model, tokenizer = tiny
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    local = policy_from_settings(Settings(policy_model=str(folder)))
    assert isinstance(local, TransformersPolicy) and local.model == str(folder)

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="vllm"):
        policy_from_settings(Settings(policy_model="vllm:org/model"))
