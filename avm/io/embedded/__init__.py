"""The embedded OpenAI-compatible LLM server (a fake model with latency and faults).

It plays a vLLM server (``dialect="vllm"``, the default: with vLLM's
``/v1/chat/completions/batch``) or OpenAI's API (``dialect="openai"``: no
batch endpoint). `serve_llm` (avm.io.embedded.server) runs it; its replies
are chosen in `avm.io.embedded.replies`, its latency and faults in
`avm.io.embedded.faults`.
`embedded_backend` is a server with a client backend connected to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from avm.io.client.openai import OpenAIBackend
from avm.io.embedded.faults import (
    DEFAULT_MODEL,
    DIALECTS,
    LLMServerError,
    ServerSettings,
)
from avm.io.embedded.server import LLMServer, ServerStatistics, run_server, serve_llm

__all__ = ["DEFAULT_MODEL", "DIALECTS", "LLMServer", "LLMServerError", "ServerSettings", "ServerStatistics",
           "embedded_backend", "run_server", "serve_llm"]


@asynccontextmanager
async def embedded_backend(settings: ServerSettings | None = None, *, max_connections: int = 8,
                           **overrides: Any) -> AsyncIterator[OpenAIBackend]:
    """An embedded server (`serve_llm`, settings and overrides as there) and a backend for it."""
    async with serve_llm(settings, **overrides) as server:
        backend = OpenAIBackend(server.url, api_key="", model=server.settings.models[0],
                                max_connections=max_connections)
        try:
            yield backend
        finally:
            await backend.aclose()
