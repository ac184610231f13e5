"""The wire: how LLM requests reach a server and how replies come back.

`Backend` (avm.io.client.backends) is the small interface the gateway needs;
`OpenAIBackend` (avm.io.client.openai) speaks it to any OpenAI-compatible
endpoint; `avm.io.client.sse` reads streamed replies.
"""

from __future__ import annotations

from avm.io.client.backends import Backend, Failure, Reply
from avm.io.client.openai import OpenAIBackend

__all__ = ["Backend", "Failure", "OpenAIBackend", "Reply"]
