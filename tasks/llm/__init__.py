"""Talking to LLM endpoints: the async client, its call cache, and the call log rows."""

from tasks.llm.cache import CallCache, request_hash
from tasks.llm.client import ChatResult, LLMCallError, LLMClient, api_key_from_env

__all__ = ["CallCache", "ChatResult", "LLMCallError", "LLMClient", "api_key_from_env",
           "request_hash"]
