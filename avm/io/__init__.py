"""LLM gateway, tools and the embedded LLM server.

``Gateway`` (avm.io.gateway) is how agents reach an LLM; ``OpenAIBackend``
(avm.io.openai) is its default backend, for the embedded server
(avm.io.server) or any OpenAI-compatible endpoint.
"""

from __future__ import annotations

from avm.errors import LLMError
from avm.io.backends import Backend, Failure, Reply
from avm.io.gateway import Gateway, GatewaySettings, GatewayStatistics
from avm.io.openai import OpenAIBackend, embedded_backend
from avm.io.request import LLMRequest, LLMResponse, Message, RequestError, Usage

__all__ = [
    "Backend",
    "Failure",
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
