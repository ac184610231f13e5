"""The gateway's records: `GatewaySettings` (every knob) and `GatewayStatistics` (a snapshot).

Both are frozen; `avm.io.gateway` re-exports them. Settings are checked when
made, so a bad value fails where it is written, with `LLMError` kind
``"config"``; ``from_mapping`` refuses unknown names (a typo is not a
default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avm.errors import LLMError

__all__ = ["GatewaySettings", "GatewayStatistics"]


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Every knob of the gateway; times in seconds, sizes in bytes or requests."""

    batch: bool = True  # send batches where the backend accepts them
    batch_size: int = 128  # most requests in one batch
    batch_window_s: float = 0.002  # gather a batch this long after the first request waits (<= 5 ms)
    max_connections: int = 1024  # HTTP requests in flight at once: one connection each (HTTP/1.1)
    max_in_flight: int = 1 << 16  # requests sent and not yet answered, all models (a batch carries many)
    max_in_flight_per_model: int = 1 << 16  # the same, per model
    aging_s: float = 1.0  # a request of priority p ranks as if it had arrived p * aging_s later
    # One HTTP attempt. As long as the OpenAI SDK's default: a reasoning model or a long completion can
    # take minutes, and a server with a queue answers late, not never; at 60 s, 10,000 agents against
    # a server that queued them past a minute sent 8,712 duplicate requests (each retry more work for it).
    attempt_timeout_s: float = 600.0
    request_timeout_s: float | None = 600.0  # a whole complete() call, queue and retries included (None: no limit)
    max_retries: int = 4  # more attempts after the first, for retryable failures
    backoff_s: float = 0.2  # delay before the first retry; doubles each time, with jitter
    backoff_max_s: float = 20.0  # cap on the backoff
    retry_after_max_s: float = 60.0  # cap on a server's Retry-After
    stream: bool = False  # send single requests with "stream": true (SSE)
    cache: bool = True  # cache replies to cacheable requests
    hot_cache_bytes: int = 64 << 20  # the hot tier's budget
    shared_bytes: int = 32 << 20  # encoded shared parts (system prompts, tool lists)
    latency_samples: int = 4096  # size of the latency reservoir
    seed: int | None = None  # seeds the retry jitter and the reservoir (None: from the OS)

    def __post_init__(self) -> None:
        def positive_int(name: str, lo: int = 1) -> None:
            value = getattr(self, name)
            if type(value) is not int or value < lo:
                raise LLMError(f"{name} must be an int >= {lo}, not {value!r}", kind="config")

        def seconds(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
                raise LLMError(f"{name} must be a finite number of seconds >= 0, not {value!r}", kind="config")

        for name in ("batch_size", "max_connections", "max_in_flight", "max_in_flight_per_model",
                     "latency_samples"):
            positive_int(name)
        positive_int("max_retries", 0)
        positive_int("hot_cache_bytes", 0)
        positive_int("shared_bytes", 0)
        for name in ("batch_window_s", "aging_s", "backoff_s", "backoff_max_s", "retry_after_max_s"):
            seconds(name)
        seconds("request_timeout_s", allow_none=True)
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise LLMError("request_timeout_s must be > 0 seconds, or None for no limit", kind="config")
        seconds("attempt_timeout_s")
        if not self.attempt_timeout_s > 0:
            raise LLMError("attempt_timeout_s must be > 0", kind="config")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> GatewaySettings:
        """Settings from a dict and keyword overrides; unknown keys are an error."""
        merged = {**(values or {}), **overrides}
        unknown = sorted(set(merged) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise LLMError(f"unknown gateway settings: {', '.join(unknown)}", kind="config")
        return cls(**merged)


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    """What the gateway has done since it was made (a snapshot)."""

    requests: int  # complete() calls
    hits_hot: int  # answered from the hot cache tier
    hits_store: int  # answered from the store tier
    misses: int  # cacheable requests found in neither tier
    uncacheable: int  # requests that may not be cached (sampled and unseeded)
    coalesced: int  # requests that joined an identical one in flight
    sent: int  # requests handed to the backend (each attempt counts)
    http_requests: int
    batches: int  # HTTP requests that carried a batch (2 or more requests)
    batch_size_mean: float  # requests per batch
    batch_size_max: int
    streamed: int  # HTTP requests sent as streams
    retries: int  # attempts after the first
    errors_by_kind: dict[str, int]  # complete() calls that raised LLMError, by kind
    latency_p50_s: float  # of replies from the network (reservoir of recent samples)
    latency_p99_s: float
    in_flight: int  # requests sent and not yet answered, now
    queued: int  # requests waiting to be sent, now
    http_connections_opened: int  # TCP connections the backend opened
    http_connections_max: int  # the most open at once
    prompt_tokens: int  # usage of replies from the network
    completion_tokens: int
    cache_errors: int  # store-tier reads or writes that failed (the gateway went on)
    first_errors: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> the first such error's message
    batches_refused: int = 0  # batches a server refused (their requests were sent singly)
    http_reconnects: int = 0  # requests sent again at once because a kept-alive connection had been closed
    retries_by_kind: dict[str, int] = dataclasses.field(default_factory=dict)  # the failures retried, by kind
    first_retries: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> the first such failure's message

    @property
    def hits(self) -> int:
        return self.hits_hot + self.hits_store
