"""How a long-context prompt is laid out for the policy: one user turn, context first.

The default is the context, a blank line, then the query, the layout LongReward's policies were
sampled with. A deployment may override it with a template holding ``{context}`` and
``{query}``; it is filled in one pass with plain string substitution (never ``str.format``), so
braces inside a context, or a context that itself contains the text ``{query}``, stay as they
are.
"""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"\{(context|query)\}")


def render(context: str, query: str, template: str | None = None) -> str:
    """The user turn's text."""
    if template is None:
        return f"{context}\n\n{query}"
    values = {"context": context, "query": query}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def build_messages(context: str, query: str, template: str | None = None) -> list[dict]:
    """Chat messages for one prompt: a single user turn."""
    return [{"role": "user", "content": render(context, query, template)}]
