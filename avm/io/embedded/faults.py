"""Settings, latency model and fault injection of the embedded LLM server.

The ``dialect`` setting says which kind of server it plays: ``"vllm"`` (the
default) also serves vLLM's ``POST /v1/chat/completions/batch``;
``"openai"`` (OpenAI's API, llama.cpp) has no batch endpoint.

Everything that makes the embedded server behave like a slow, unreliable
remote model is decided here, away from HTTP:

* **Latency**: each answered HTTP request waits ``latency_ms`` plus a jitter,
  then ``per_token_ms`` for each output token (for a batch or a prompt list,
  the longest reply counts: the items decode in parallel, as on a GPU).
  Jitter is uniform in ``[0, jitter_ms]`` or lognormal with median
  ``jitter_ms`` (``jitter="lognormal"``, spread ``jitter_sigma``, capped at
  20 times the median).
* **Faults**, one draw per HTTP request, with these rates (their sum <= 1):
  ``rate_drop`` (read the request, close the connection without a response),
  ``rate_timeout`` (read the request, say nothing for ``timeout_hold_s``,
  then close), ``rate_429`` (``Retry-After`` and ``retry-after-ms`` headers),
  ``rate_500``, and ``rate_malformed`` (status 200 with a body that is not
  JSON; for a stream, an event whose data is not JSON).

Determinism: a decision depends on the settings' ``seed``, the request's
digest (blake3 of its canonical JSON) and how many times this server has
already seen that digest (its attempt number). It does *not* depend on how
concurrent requests interleave, so a run is reproducible under any
scheduling, and a retry of a request (attempt 2, 3, ...) gets a fresh draw,
so a client that retries eventually gets through at rates below 1.0. The
attempt counts are kept for the last 65,536 distinct digests.

All sleeps are ``trio.sleep``, so tests can drive them with trio's MockClock.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import blake3

from avm.errors import AvmError

FAULT_KINDS: tuple[str, ...] = ("drop", "timeout", "429", "500", "malformed")
JITTER_KINDS: tuple[str, ...] = ("uniform", "lognormal")
DIALECTS: tuple[str, ...] = ("openai", "vllm")  # the kinds of server the embedded one plays
DEFAULT_MODEL = "avm-embedded"
_SEEN_CAP = 1 << 16
_LOGNORMAL_CAP = 20.0


class LLMServerError(AvmError):
    """An error of the embedded LLM server: bad settings, a port in use, a refused request."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Every knob of the embedded server; times in the unit their name says."""

    port: int = 0  # 0: a free port chosen by the OS; the server binds 127.0.0.1 only
    seed: int = 0  # seeds latency jitter and fault draws (replies depend on the request only)
    latency_ms: float = 0.0  # fixed delay before each answer
    per_token_ms: float = 0.0  # added per output token (the longest item of a batch)
    jitter_ms: float = 0.0  # uniform [0, jitter_ms], or the lognormal median
    jitter: str = "uniform"  # "uniform" or "lognormal"
    jitter_sigma: float = 0.5  # spread of the lognormal jitter
    rate_429: float = 0.0  # fraction of requests answered 429 with Retry-After
    rate_500: float = 0.0  # fraction answered 500
    rate_timeout: float = 0.0  # fraction held silently for timeout_hold_s, then closed
    rate_malformed: float = 0.0  # fraction answered 200 with a body that is not JSON
    rate_drop: float = 0.0  # fraction whose connection is closed without a response
    retry_after_s: float = 1.0  # the Retry-After of a 429 (header: whole seconds, rounded up)
    timeout_hold_s: float = 60.0  # how long a "timeout" fault holds the request
    final_after: int = 3  # assistant + tool messages after which the reply is a final answer
    models: tuple[str, ...] = field(default=(DEFAULT_MODEL,))  # listed by /v1/models; first is the default
    # Requests naming a model outside `models` get 404 model_not_found, as from OpenAI and vLLM; True
    # serves any name (echoed), for clients whose model name is not worth configuring.
    any_model: bool = False
    max_body_bytes: int = 64 << 20  # larger request bodies get 413
    # Connection limits, with the defaults of nginx's ngx_http_core_module (keepalive_timeout 75s,
    # client_header_timeout 60s, client_body_timeout 60s; uvicorn's timeout_keep_alive is 5 s, and its
    # limit_concurrency answers 503 past the cap). 75 s outlasts the AVM client's 60 s idle expiry, so a
    # pooled connection is dropped by the client before the server closes it. None: no limit.
    idle_timeout_s: float | None = 75.0  # close a keep-alive connection idle this long between requests
    header_timeout_s: float | None = 60.0  # a request's headers must arrive within this, from its first byte
    body_timeout_s: float | None = 60.0  # the longest wait between two reads of a request body
    max_connections: int | None = None  # more are answered 503 and closed; None: the open-file limit less 256
    dialect: str = "vllm"  # "vllm": with vLLM's batch endpoint; "openai": without (as OpenAI, llama.cpp)

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise LLMServerError(f"port must be an int in 0..65535, not {self.port!r}")
        for name in ("latency_ms", "per_token_ms", "jitter_ms", "jitter_sigma", "retry_after_s", "timeout_hold_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise LLMServerError(f"{name} must be a finite number >= 0, not {value!r}")
        if not isinstance(self.dialect, str) or self.dialect not in DIALECTS:
            raise LLMServerError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        if self.jitter not in JITTER_KINDS:
            raise LLMServerError(f"jitter must be one of {', '.join(JITTER_KINDS)}, not {self.jitter!r}")
        total = 0.0
        for kind in FAULT_KINDS:
            rate = getattr(self, f"rate_{kind}")
            if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise LLMServerError(f"rate_{kind} must be a number in [0, 1], not {rate!r}")
            total += rate
        if total > 1.0 + 1e-9:
            raise LLMServerError(f"fault rates add up to {total:g}, more than 1")
        if not isinstance(self.final_after, int) or self.final_after < 0:
            raise LLMServerError(f"final_after must be an int >= 0, not {self.final_after!r}")
        if isinstance(self.models, str) or not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise LLMServerError("models must be a non-empty sequence of names")
        object.__setattr__(self, "models", tuple(self.models))
        if not isinstance(self.any_model, bool):
            raise LLMServerError(f"any_model must be a boolean, not {self.any_model!r}")
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1024:
            raise LLMServerError(f"max_body_bytes must be an int >= 1024, not {self.max_body_bytes!r}")
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < math.inf):
                raise LLMServerError(f"{name} must be a finite number > 0 or None, not {value!r}")
        if self.max_connections is not None and (isinstance(self.max_connections, bool)
                                                 or not isinstance(self.max_connections, int)
                                                 or self.max_connections < 1):
            raise LLMServerError(f"max_connections must be an int >= 1 or None, not {self.max_connections!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> ServerSettings:
        """Settings from a dict (and keyword overrides); unknown keys are an error."""
        merged = {**(values or {}), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise LLMServerError(f"unknown server settings: {', '.join(unknown)}")
        return cls(**merged)

    def replace(self, **changes: Any) -> ServerSettings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def faulty(self) -> bool:
        """True if any fault rate is above zero."""
        return any(getattr(self, f"rate_{kind}") > 0 for kind in FAULT_KINDS)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one HTTP request: a fault (or None) and its delays."""

    fault: str | None  # one of FAULT_KINDS, or None to answer normally
    delay_s: float  # fixed latency plus jitter, slept before answering
    per_token_s: float  # slept per output token

    def answer_delay(self, tokens: int) -> float:
        """The whole delay before a non-streamed answer of ``tokens`` tokens."""
        return self.delay_s + self.per_token_s * tokens


class FaultModel:
    """Draws a `Plan` for each request from the seed, its digest and attempt."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self._latency_s = settings.latency_ms / 1000.0
        self._per_token_s = settings.per_token_ms / 1000.0
        self._jitter_s = settings.jitter_ms / 1000.0
        self._seed = settings.seed.to_bytes(16, "little", signed=True)
        # Cumulative thresholds over one uniform draw, in FAULT_KINDS order.
        bounds: list[tuple[float, str]] = []
        acc = 0.0
        for kind in FAULT_KINDS:
            rate = float(getattr(settings, f"rate_{kind}"))
            if rate > 0:
                acc += rate
                bounds.append((acc, kind))
        self._bounds = tuple(bounds)
        self._random = bool(bounds) or self._jitter_s > 0
        self._plain = Plan(None, self._latency_s, self._per_token_s)
        self._seen: dict[bytes, int] = {}

    def decide(self, digest: bytes) -> Plan:
        """The plan for the next attempt of the request with this digest."""
        if not self._random:
            return self._plain
        seen = self._seen
        attempt = seen.pop(digest, 0) + 1
        seen[digest] = attempt  # re-inserted: most recent last
        if len(seen) > _SEEN_CAP:
            del seen[next(iter(seen))]
        key = blake3.blake3(self._seed + digest + attempt.to_bytes(8, "little")).digest(16)
        rng = random.Random(int.from_bytes(key, "little"))
        fault: str | None = None
        if self._bounds:
            u = rng.random()
            for bound, kind in self._bounds:
                if u < bound:
                    fault = kind
                    break
        delay = self._latency_s + self._jitter(rng)
        return Plan(fault, delay, self._per_token_s)

    def _jitter(self, rng: random.Random) -> float:
        scale = self._jitter_s
        if scale <= 0:
            return 0.0
        if self.settings.jitter == "uniform":
            return rng.random() * scale
        return min(rng.lognormvariate(math.log(scale), self.settings.jitter_sigma), _LOGNORMAL_CAP * scale)

    def retry_after_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers of a 429: Retry-After in whole seconds, and in ms."""
        seconds = self.settings.retry_after_s
        return [(b"retry-after", str(math.ceil(seconds)).encode()),
                (b"retry-after-ms", str(int(round(seconds * 1000))).encode())]
