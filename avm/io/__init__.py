"""How agents reach an LLM: the gateway decides, the client moves bytes.

``Gateway`` (avm.io.gateway) caches, coalesces, queues, batches and retries;
the client (avm.io.client) speaks HTTP to any OpenAI-compatible endpoint;
the embedded server (avm.io.embedded) is the default endpoint, offline.
"""

from __future__ import annotations

from avm.errors import LLMError
from avm.io.client.backends import Backend, Failure, Reply
from avm.io.client.openai import OpenAIBackend
from avm.io.embedded import embedded_backend
from avm.io.gateway import Gateway, GatewaySettings, GatewayStatistics
from avm.io.request import Filled, LLMRequest, LLMResponse, Message, RequestError, Usage

__all__ = [
    "Backend",
    "Failure",
    "Filled",
    "Gateway",
    "GatewaySettings",
    "GatewayStatistics",
    "LLMError",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "OpenAIBackend",
    "Reply",
    "RequestError",
    "Usage",
    "embedded_backend",
]
