"""Faithfulness evidence: top-k context segments per statement by embedding similarity.

A prompt's context is cut into segments and embedded once (:meth:`SegmentIndex.build`); all
K answers of that prompt query the same index.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from tasks.chunking import Chunk, chunk_by_tokens
from tasks.embeddings import Embedder


@dataclass
class SegmentIndex:
    segments: list[Chunk]
    vectors: np.ndarray

    @classmethod
    async def build(cls, context: str, tokenizer: Tokenizer, embedder: Embedder,
                    segment_tokens: int = 128) -> SegmentIndex:
        # tokenizing a long context takes tens of ms: keep it off the event loop
        segments = await asyncio.to_thread(chunk_by_tokens, context, tokenizer, segment_tokens)
        vectors = await embedder.embed([s.text for s in segments])
        return cls(segments, vectors)

    async def top_k(self, embedder: Embedder, statements: list[str],
                    k: int = 5) -> list[list[Chunk]]:
        """For each statement, its k most similar segments, shown in document order."""
        if not statements or not self.segments:
            return [[] for _ in statements]
        queries = await embedder.embed(statements)
        similarity = queries @ self.vectors.T
        k = min(k, len(self.segments))
        best = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        return [[self.segments[i] for i in sorted(row)] for row in best]
