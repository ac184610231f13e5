"""`Gateway`: the one way agents reach an LLM.

Agents never speak HTTP. An agent hands its `LLMRequest` to
``await gateway.complete(request, priority=...)`` and gets an `LLMResponse`
or an `LLMError`. On the way:

1. **Key.** The cache key of a request that can be cached (`avm.io.keys`:
   the same bytes as `LLMRequest.cache_key()`, in a few microseconds). It
   also names the request in errors: ``model/first-12-hex-of-the-key``. A
   request that can never be cached is not keyed (keying a long
   conversation costs more than sending it); its parameters are still
   checked, and errors name it ``model/#N`` (the N-th request).
2. **Cache** (cacheable requests only: temperature 0, a seed, or opted in):
   the hot LRU, then the store (`avm.io.cache`). A hit never touches the
   network and comes back with ``cached=True``.
3. **Single-flight.** An identical cacheable request already in flight is
   joined: it is sent once and every waiter gets its reply or its error.
4. **Queue.** Requests wait per model in a heap ordered by
   ``enqueue_time + priority * aging_s`` (priority 0 interactive, 1 normal,
   2 background): interactive requests go first, but a background request
   that has waited ``2 * aging_s`` ranks with a fresh interactive one, so no
   stream of interactive requests starves it.
5. **Batches.** The batcher holds an HTTP slot (there are
   ``max_connections``), gathers requests of one model for up to
   ``batch_window_s`` or until ``batch_size`` wait, and sends them as one
   HTTP request where the backend accepts batches (else one by one, over the
   same bounded slots). ``max_in_flight`` and ``max_in_flight_per_model``
   bound the requests sent and not yet answered: beyond them requests stay
   queued, in priority order (backpressure). A request that no batch can
   take, with nothing queued ahead of it and capacity free, skips the queue:
   its caller's task sends it at once and reads the reply (see
   `Gateway._send_now`; a fleet against a server without batches sends every
   request that way).
6. **Failures.** Connection errors, timeouts, 429 and 5xx are retried with
   exponential backoff and jitter, at least as late as the server's
   ``Retry-After`` (capped), up to ``max_retries`` times; each attempt has
   ``attempt_timeout_s``, so every call ends. A whole call is bounded too:
   ``timeout=`` to `complete`, or ``request_timeout_s`` for all (a sweep
   over the waiting requests, not a cancel scope each). A
   malformed reply, a failed batch item,
   a 4xx becomes an `LLMError` naming the request, delivered to its waiters
   only. A 401 is logged once, clearly, never retried, and from then on
   every request that would need the network fails at once with the same
   error (cache hits are still served). Nothing a request does can stop the
   batcher: an unexpected exception while sending fails that send's requests
   with kind ``"internal"`` and is logged.

Token usage comes back in ``LLMResponse.usage`` (prompt and completion
tokens as the server counted them; the cached usage for a cache hit); the
runtime charges the agent's energy from it. `statistics` sums the usage of
replies that came from the network.

The gateway owns a trio nursery (the batcher, the sends, the retry timers):
use it as ``async with Gateway(backend, store=store) as gw:``; leaving the
block fails what is still waiting with kind ``"cancelled"`` and closes the
backend's HTTP client.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Generator
from contextlib import AsyncExitStack
from heapq import heappop, heappush
from types import TracebackType
from typing import Any, Literal, Self

import trio

from avm.errors import LLMError, lone_exception
from avm.io.cache import ResponseCache
from avm.io.client.backends import Backend, Failure, Reply
from avm.io.gateway_settings import GatewaySettings, GatewayStatistics
from avm.io.keys import RequestKeyer
from avm.io.request import LLMRequest, LLMResponse, RequestError, Usage
from avm.io.wire import WireEncoder

__all__ = ["Gateway", "GatewaySettings", "GatewayStatistics"]

log = logging.getLogger("avm.io.gateway")

PRIORITIES = (0, 1, 2)  # interactive, normal, background
_INF = math.inf

# states of a pending request
_QUEUED, _SENT, _RETRY, _DONE, _ABANDONED = range(5)

_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_reschedule = trio.lowlevel.reschedule
_ABORT_OK = trio.lowlevel.Abort.SUCCEEDED


class _Ready:
    """An awaitable whose value is there already (a cache hit): awaiting it does not yield."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator that returns at once


class _Pending:
    """One request on its way: queued, sent, waiting to retry, or done."""

    __slots__ = (
        "attempts",
        "batchable",
        "cacheable",
        "conv",
        "deadline",
        "done",
        "error",
        "head",
        "key",
        "model",
        "owner",
        "rank",
        "reply",
        "request",
        "seq",
        "state",
        "tasks",
    )

    def __init__(self, request: LLMRequest, key: bytes, head: bytes, conv: list[bytes], batchable: bool,
                 cacheable: bool, rank: float, seq: int, deadline: float):
        self.key = key
        self.model = request.model
        self.head = head  # shared by every request with the same parameters (the encoder keeps one)
        self.conv: list[bytes] | None = conv  # this request's own messages; None once handed to the backend
        self.request = request  # to encode the messages again if they must be sent again
        self.batchable = batchable  # vLLM's batch endpoint can take it (cleared after a refused batch)
        self.deadline = deadline
        self.cacheable = cacheable
        self.rank = rank
        self.seq = seq
        self.attempts = 1
        self.tasks: list[trio.lowlevel.Task] = []  # the trio tasks waiting for it (not the owner)
        # while the task that made it sends it (`Gateway._send_now`): True, or the cancel scope bounding it
        self.owner: trio.CancelScope | Literal[True] | None = None
        self.done = False
        self.reply: Reply | None = None
        self.error: LLMError | None = None
        self.state = _QUEUED

    @property
    def ident(self) -> str:
        """The request's name in errors: its cache key's first 12 hex digits, or #N for the N-th
        request sent that can never be cached (those are not keyed)."""
        return f"{self.model}/{self.key.hex()[:12]}" if self.key else f"{self.model}/#{self.seq}"


def batchable(request: LLMRequest) -> bool:
    """True if vLLM's batch endpoint can take ``request``: one choice, no tools (vLLM renders none)."""
    return (request.tools is None and request.n in (None, 1) and request.tool_choice in (None, "none")
            and not request.extra)


def _ident(request: LLMRequest, key: bytes | None) -> str:
    return f"{request.model}/{key.hex()[:12] if key is not None else '?'}"


class Gateway:
    """Caches, coalesces, queues, batches and sends LLM requests (see the module docstring)."""

    def __init__(self, backend: Backend, *, store: Any = None,
                 settings: GatewaySettings | None = None, **overrides: Any):
        if settings is None:
            settings = GatewaySettings.from_mapping(overrides)
        elif overrides:
            settings = dataclasses.replace(settings, **overrides)
        self.settings = settings
        self._backend = backend
        self._backend_deadlines = bool(getattr(backend, "deadlines", False))  # it bounds attempts itself
        self._store = store
        self._keyer = RequestKeyer()
        self._encoder = WireEncoder(store, shared_bytes=settings.shared_bytes)
        self._cache = ResponseCache(store, hot_bytes=settings.hot_cache_bytes)
        self._rng = random.Random(settings.seed)
        self._seq = itertools.count()
        self._queues: dict[str, list[tuple[float, int, _Pending]]] = {}
        self._flights: dict[bytes, _Pending] = {}
        self._live: set[_Pending] = set()
        self._queued = 0
        self._in_flight = 0
        self._in_flight_by_model: dict[str, int] = {}
        self._window_start = _INF
        self._wake = trio.Event()
        self._wake_at = _INF  # wake the batcher when this many requests are queued
        self._wake_on_free = False  # ... or when in-flight capacity frees up
        self._slots = trio.Semaphore(max(1, min(settings.max_connections,
                                                getattr(backend, "max_connections", settings.max_connections))))
        self._batches_refused = 0
        self._nursery: trio.Nursery | None = None
        self._stack: AsyncExitStack | None = None
        self._running = False
        self._closed = False
        self._auth: Failure | None = None
        self._unsupported_logged = False
        # counters
        self._requests = self._hits_hot = self._hits_store = self._misses = self._uncacheable = 0
        self._coalesced = self._sent = self._http = self._batches = self._batch_items = self._batch_max = 0
        self._streamed = self._retries = self._prompt_tokens = self._completion_tokens = 0
        self._errors: dict[str, int] = {}
        self._retried: dict[str, int] = {}  # failures retried, by kind, and the first message of each
        self._first_retried: dict[str, str] = {}
        self._first_errors: dict[str, str] = {}
        self._latencies: list[float] = []
        self._latency_seen = 0

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Gateway {state} backend={self._backend!r} queued={self._queued} in_flight={self._in_flight}>"

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._closed:
            raise LLMError("a gateway runs once: it is running or has closed", kind="config")
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        self._running = True
        self._nursery.start_soon(self._batcher)
        if self.settings.request_timeout_s is not None:
            self._nursery.start_soon(self._sweep_deadlines, self.settings.request_timeout_s)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._running = False
        self._closed = True
        for p in list(self._live):
            self._finish(p, error=LLMError("the gateway closed before the reply came", kind="cancelled",
                                           request=p.ident))
        stack, self._stack = self._stack, None
        assert stack is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            with lone_exception():
                await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._backend.aclose()

    # ------------------------------------------------------------ the entry point

    async def complete(self, request: LLMRequest, *, priority: int = 1, timeout: float | None = None) -> LLMResponse:
        """The reply to ``request``; `LLMError` if there is none.

        ``priority``: 0 interactive, 1 normal, 2 background. ``timeout``
        (seconds) bounds this call, queueing and retries included; by default
        ``settings.request_timeout_s``. A hot cache hit returns without
        yielding to the scheduler (a few microseconds, no checkpoint): a
        caller that may loop on hits yields on its own schedule.
        """
        return await self.submit(request, priority=priority, timeout=timeout)

    def submit(self, request: LLMRequest, *, priority: int = 1,
               timeout: float | None = None) -> Awaitable[LLMResponse]:
        """`complete` for callers that await at once (``await gateway.submit(...)``): what it returns is the
        coroutine that waits for the reply (or the reply, ready), so a request waiting for its reply holds
        no frame of this method (~0.4 KB; what an agent's request does). An error found before anything
        is sent is raised by the call itself."""
        start = trio.current_time()
        self._requests += 1
        if priority not in PRIORITIES:
            raise ValueError(f"priority must be 0 (interactive), 1 (normal) or 2 (background), not {priority!r}")
        cacheable = self.settings.cache and request.cacheable
        try:
            if cacheable:
                key = self._keyer.digest(request)
            else:  # never cached nor joined: no key to compute (keying a long conversation costs ~0.2 ms)
                self._keyer.check(request)
                key = b""
        except RequestError as exc:
            raise self._raised(LLMError(str(exc), kind="bad_request", request=_ident(request, None))) from exc
        if cacheable:
            entry = self._cache.hot(key)
            if entry is not None:
                self._hits_hot += 1
                return _Ready(LLMResponse(entry[0], entry[1], Usage(entry[2], entry[3]), trio.current_time() - start,
                                          True, entry[4]))
            pending = self._flights.get(key)
            if pending is not None:
                self._coalesced += 1
                pending.deadline = max(pending.deadline, self._deadline(start, timeout))  # the later one holds
                return self._wait(pending, start, timeout)
            entry = self._cache.stored(key)
            if entry is not None:
                self._hits_store += 1
                return _Ready(LLMResponse(entry[0], entry[1], Usage(entry[2], entry[3]), trio.current_time() - start,
                                          True, entry[4]))
            self._misses += 1
        else:
            self._uncacheable += 1
        if not self._running:
            raise self._raised(LLMError("the gateway is not running (use `async with gateway:`)", kind="cancelled",
                                        request=_ident(request, key)))
        if self._auth is not None:
            raise self._raised(self._auth_error(_ident(request, key)))
        try:
            head, conv = self._encoder.parts(request)
        except RequestError as exc:
            if not key:  # on this path the cost of the key does not matter: name the request by it
                try:
                    key = self._keyer.digest(request)
                except RequestError:
                    pass
            raise self._raised(LLMError(str(exc), kind="bad_request", request=_ident(request, key or None))) from exc
        s = self.settings
        pending = _Pending(request, key, head, conv, batchable(request) and not s.stream, cacheable,
                           start + priority * s.aging_s, next(self._seq), self._deadline(start, timeout))
        del conv  # held from here by `pending` only, which gives it up once it is sent (`_body`)
        if cacheable:
            self._flights[key] = pending
        self._live.add(pending)
        if (self._queued == 0 and not (pending.batchable and s.batch and self._backend.supports_batch)
                and self._in_flight < s.max_in_flight and self._slots.value > 0
                and self._in_flight_by_model.get(pending.model, 0) < s.max_in_flight_per_model):
            return self._send_now(pending, start, timeout)
        self._enqueue(pending)
        return self._wait(pending, start, timeout)

    async def _send_now(self, p: _Pending, start: float, timeout: float | None) -> LLMResponse:
        """Send ``p`` from the caller's own task and read its reply there (capacity is free, nothing waits
        ahead of it, no batch can take it).

        Through the queue, a request crossed three trio tasks (the caller, the batcher, a sender) and a
        reply two (the sender, the caller): each hand-over waits for a whole round of the scheduler. When
        a thousand replies arrive together, every agent's next request then waits until all thousand
        agents have done each step, so the fleet stays in lock-step bursts and each turn costs the
        whole burst (measured: efficiency 0.72 at 1,000 agents against a 1 s server). Here the reply
        reaches the program, and its next request the wire, within one step of one task.

        Identical requests may still join ``p`` (single-flight): they wait in ``p.tasks`` as usual. If
        the caller is cancelled while ``p`` is on the wire, its connection is dropped and ``p`` goes back
        to the queue for those who joined it (or is abandoned if none did). A retryable failure is
        retried through the queue, the caller waiting as any waiter does.
        """
        self._slots.acquire_nowait()
        p.state = _SENT
        self._in_flight += 1
        model = p.model
        self._in_flight_by_model[model] = self._in_flight_by_model.get(model, 0) + 1
        s = self.settings
        backend = self._backend
        # (a backend with `deadlines` takes a deadline too, which its `Backend` protocol cannot say)
        send: Callable[..., Awaitable[Reply]] = backend.send
        if s.stream:
            send = backend.send_stream
            self._streamed += 1
        self._http += 1
        self._sent += 1
        # The attempt ends at the first of its own limit, the caller's timeout and the request's deadline
        # (the sweeper's). A backend that takes the deadline bounds the wait itself, and the request holds
        # no cancel scope while it waits (~0.9 KB each); `_finish` (the gateway closing, an auth failure)
        # does not interrupt it: the pool's close wakes it, and a reply that comes after is let go.
        # Other backends get one cancel scope, which `_finish` cancels.
        now = trio.current_time()
        attempt_end = now + s.attempt_timeout_s
        caller_end = _INF if timeout is None else start + timeout
        request_end = p.deadline  # as it is now: a caller joining later may move it
        end = min(attempt_end, caller_end, request_end)
        late = False  # whether the attempt's own end stopped it (not a cancellation from outside)
        scope = None
        if self._backend_deadlines:
            p.owner = True
            sending = send(self._body(p), end)
        else:
            p.owner = scope = trio.CancelScope(deadline=end)
            sending = send(self._body(p))
        outcome: Reply | Failure | None = None
        try:
            if scope is None:
                outcome = await sending
            else:
                with scope:
                    outcome = await sending
        except Failure as failure:
            if failure.kind == "deadline":  # the backend stopped at ``end``, as the scope would have
                late = True
            else:
                outcome = failure
        except Exception:  # a bug must not take the caller down: its request fails, the gateway goes on
            log.exception("LLM gateway: unexpected error sending a request for %s", model)
            if p.state == _SENT:
                self._finish(p, error=LLMError("internal error in the LLM gateway (see the log)", kind="internal",
                                               request=p.ident))
        finally:
            self._slots.release()
            if scope is not None and scope.cancelled_caught:
                late = True
            if late and outcome is None and not p.done and p.state == _SENT and end < caller_end:
                if end == request_end and p.deadline <= trio.current_time():  # the sweeper's deadline
                    self._finish(p, error=LLMError(f"no reply within {s.request_timeout_s:g} s", kind="timeout",
                                                   request=p.ident))
                else:  # the attempt's limit (or a deadline a joining caller has moved since): another attempt
                    outcome = Failure("timeout", f"no reply within {end - now:g} s")
            if outcome is None:
                p.owner = None
                if not p.done and p.state == _SENT:  # the caller was cancelled, or its timeout passed, on the wire
                    self._release(p)
                    if p.tasks:
                        self._enqueue(p)
                    else:
                        self._abandon(p)
        if outcome is not None:
            self._settle([(p, outcome)])  # the owner still set: a retryable failure is retried for it
            p.owner = None
        if p.done:
            return self._result(p, start)
        return await self._wait(p, start, timeout)  # a retry is due, or the caller's timeout has passed

    def _deadline(self, start: float, timeout: float | None) -> float:
        """When the sweeper fails a request: ``request_timeout_s`` after it came, unless the caller gave its
        own ``timeout`` (then the caller's cancel scope bounds it, and the sweeper never does)."""
        limit = self.settings.request_timeout_s
        return _INF if timeout is not None or limit is None else start + limit

    async def _wait(self, p: _Pending, start: float, timeout: float | None) -> LLMResponse:
        """Park this task until ``p`` is done (trio's low-level parking: no Event per request).

        Ten thousand agents waiting means ten thousand of these; each object
        a waiting request keeps alive is traversed by every full collection
        of the garbage collector, so a waiter holds only its task in
        ``p.tasks`` and this frame. An explicit ``timeout`` takes a cancel
        scope here; the default deadline (``request_timeout_s``) costs none:
        the deadline sweeper fails the request when it passes.
        """
        limit = timeout
        task = _current_task()
        tasks = p.tasks
        tasks.append(task)

        def abort(_: Any) -> trio.lowlevel.Abort:
            tasks.remove(task)
            return _ABORT_OK

        try:
            if limit is None:
                await _wait_task_rescheduled(abort)
            else:
                with trio.move_on_at(start + limit):
                    await _wait_task_rescheduled(abort)
        finally:
            if not p.done and not tasks:
                self._abandon(p)
        if not p.done:
            raise self._raised(LLMError(f"no reply within {limit:g} s", kind="timeout", request=p.ident))
        return self._result(p, start)

    def _result(self, p: _Pending, start: float) -> LLMResponse:
        """The reply of ``p`` (done) to one of its callers, or its error raised."""
        error = p.error
        if error is not None:
            raise self._raised(LLMError(error.message, kind=error.kind, request=error.request, status=error.status))
        reply = p.reply
        assert reply is not None
        latency = trio.current_time() - start
        self._sample(latency)
        return LLMResponse(reply.text, reply.finish_reason, reply.usage, latency, False, reply.tool_calls)

    def _raised(self, error: LLMError) -> LLMError:
        kind = error.kind
        self._errors[kind] = self._errors.get(kind, 0) + 1
        if kind not in self._first_errors:
            self._first_errors[kind] = str(error)
        return error

    # ------------------------------------------------------------ the queue

    def _enqueue(self, p: _Pending) -> None:
        p.state = _QUEUED
        queue = self._queues.get(p.model)
        if queue is None:
            queue = self._queues[p.model] = []
        heappush(queue, (p.rank, p.seq, p))
        if self._queued == 0:
            self._window_start = trio.current_time()
        self._queued += 1
        if self._queued >= self._wake_at:
            self._wake.set()

    def _abandon(self, p: _Pending) -> None:
        """Nobody waits for ``p`` any more: drop it unless it is already on the wire."""
        if p.state == _SENT:
            return  # the reply will still be cached
        if p.state == _QUEUED:
            self._queued -= 1
            if self._queued == 0:
                self._queues.clear()
        p.state = _ABANDONED
        self._live.discard(p)
        if self._flights.get(p.key) is p:
            del self._flights[p.key]

    def _pick(self) -> str | None:
        """The model whose best queued request ranks first, among models with capacity."""
        if self._in_flight >= self.settings.max_in_flight:
            return None
        limit = self.settings.max_in_flight_per_model
        best: tuple[float, int, _Pending] | None = None
        best_model = None
        for model, queue in list(self._queues.items()):
            while queue and queue[0][2].state != _QUEUED:
                heappop(queue)
            if not queue:
                del self._queues[model]
                continue
            if self._in_flight_by_model.get(model, 0) >= limit:
                continue
            if best is None or queue[0][:2] < best[:2]:
                best, best_model = queue[0], model
        return best_model

    async def _sleep_until(self, queued: float, on_free: bool = False) -> None:
        """Wait until ``queued`` requests wait (or capacity frees up, with ``on_free``)."""
        self._wake = trio.Event()
        self._wake_at = queued
        self._wake_on_free = on_free
        try:
            await self._wake.wait()
        finally:
            self._wake_at = _INF
            self._wake_on_free = False

    async def _take(self) -> tuple[str, list[_Pending]]:
        """What to send next in one HTTP request (one model): one request, or a batch with one head.

        A batch is made only where the backend takes batches, of requests
        it can batch (`batchable`) with the very same head (model and
        sampling parameters). Anything else goes alone, at once: a fleet
        whose requests carry tools sends each on its own connection.
        """
        s = self.settings
        while True:
            if self._queued == 0:
                await self._sleep_until(1)
                continue
            model = self._pick()
            if model is None:  # at the in-flight limits: wait for a reply, or another model's request
                await self._sleep_until(self._queued + 1, on_free=True)
                continue
            queue = self._queues[model]
            top = queue[0][2]
            batching = s.batch and top.batchable and self._backend.supports_batch
            if batching and self._queued < s.batch_size and s.batch_window_s > 0:
                deadline = self._window_start + s.batch_window_s
                if trio.current_time() < deadline:
                    with trio.move_on_at(deadline):
                        await self._sleep_until(s.batch_size)
                    continue
            room = min(s.batch_size if batching else 1, s.max_in_flight - self._in_flight,
                       s.max_in_flight_per_model - self._in_flight_by_model.get(model, 0))
            items: list[_Pending] = []
            aside: list[tuple[float, int, _Pending]] = []
            looked = 0
            head = top.head
            while queue and len(items) < room and looked < 4 * room:
                entry = heappop(queue)
                p = entry[2]
                if p.state != _QUEUED:
                    continue
                looked += 1
                if items and not (p.batchable and p.head is head):
                    aside.append(entry)  # another head, or not batchable: a later send takes it
                    continue
                p.state = _SENT
                items.append(p)
            for entry in aside:
                heappush(queue, entry)
            if not queue:
                del self._queues[model]
            if not items:
                continue
            self._queued -= len(items)
            # leftovers start a new window: a slot that frees later than that sends them at once
            self._window_start = trio.current_time() if self._queued else _INF
            self._in_flight += len(items)
            self._in_flight_by_model[model] = self._in_flight_by_model.get(model, 0) + len(items)
            return model, items

    async def _batcher(self) -> None:
        """Forever: once a request is queued, take an HTTP slot, take a batch, send it in its own task.

        An idle batcher holds no slot: with every slot but one in use, the caller of the next request
        sends it itself (`_send_now`)."""
        slots = self._slots
        assert self._nursery is not None
        while True:
            if self._queued == 0:
                await self._sleep_until(1)
                continue
            await slots.acquire()
            if self._queued == 0:  # what was queued was abandoned while the slot came
                slots.release()
                continue
            try:
                model, items = await self._take()
            except Exception:  # a bug: fail what waits rather than take the VM down, and go on
                slots.release()
                log.exception("LLM gateway: unexpected error in the batcher")
                self._fail_waiting(LLMError("internal error in the LLM gateway (see the log)", kind="internal"))
                await trio.sleep(0.01)
                continue
            except BaseException:
                slots.release()
                raise
            self._nursery.start_soon(self._send, model, items)

    async def _sweep_deadlines(self, limit: float) -> None:
        """Fail requests past their deadline: one pass over the live requests every ``limit / 8`` (<= 1 s)."""
        period = min(1.0, limit / 8)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            late = [p for p in self._live if p.deadline <= now]
            for p in late:
                if not p.done:
                    self._finish(p, error=LLMError(f"no reply within {limit:g} s", kind="timeout", request=p.ident))

    def _fail_waiting(self, error: LLMError) -> None:
        """Fail every request that is queued or waiting to retry with ``error`` (its request named)."""
        for p in list(self._live):
            if p.state in (_QUEUED, _RETRY):
                self._finish(p, error=LLMError(error.message, kind=error.kind, request=p.ident,
                                               status=error.status))

    # ------------------------------------------------------------ sending

    async def _send(self, model: str, items: list[_Pending]) -> None:
        try:
            await self._send_items(items)
        except Exception:  # a bug must not take the gateway down: fail this send's requests, go on
            log.exception("LLM gateway: unexpected error sending %d request(s) for %s", len(items), model)
            for p in items:
                if p.state == _SENT:
                    self._release(p)
                    self._finish(p, error=LLMError("internal error in the LLM gateway (see the log)",
                                                   kind="internal", request=p.ident))
        finally:
            self._slots.release()

    async def _send_items(self, items: list[_Pending]) -> None:
        s = self.settings
        backend = self._backend
        self._http += 1
        self._sent += len(items)
        if len(items) == 1:
            p = items[0]
            send = backend.send
            if s.stream:
                send = backend.send_stream
                self._streamed += 1
            outcome: Reply | Failure
            with trio.move_on_after(s.attempt_timeout_s) as scope:
                try:
                    outcome = await send(self._body(p))
                except Failure as failure:
                    outcome = failure
            if scope.cancelled_caught:
                outcome = Failure("timeout", f"no reply within {s.attempt_timeout_s:g} s")
            self._settle([(p, outcome)])
            return
        outcomes: list[Reply | Failure] | Failure
        with trio.move_on_after(s.attempt_timeout_s) as scope:
            try:
                outcomes = await backend.send_batch(items[0].head, [self._conv(p) for p in items])
            except Failure as failure:
                outcomes = failure
        if scope.cancelled_caught:
            outcomes = Failure("timeout", f"no reply within {s.attempt_timeout_s:g} s")
        if isinstance(outcomes, Failure):
            if outcomes.kind == "unsupported":
                self._http -= 1  # the probe of a batch endpoint that is not there: not a request served
                self._sent -= len(items)
                self._unsupported(items)
                return
            if outcomes.kind in ("bad_request", "malformed"):
                # the server fails a whole batch for one bad item: send each alone, so only that one fails
                self._batches_refused += 1
                self._sent -= len(items)
                for p in items:
                    p.batchable = False
                    self._requeue(p)
                return
            self._count_batch(items)
            self._settle([(p, outcomes) for p in items])
        else:
            self._count_batch(items)
            self._settle(list(zip(items, outcomes, strict=True)))  # (one outcome per item)

    def _conv(self, p: _Pending) -> list[bytes]:
        """The pieces of ``p``'s messages, encoded again if an earlier attempt gave them up."""
        conv = p.conv
        if conv is None:
            conv = p.conv = self._encoder.parts(p.request)[1]
        return conv

    def _body(self, p: _Pending) -> list[bytes]:
        """``p``'s body for the backend's ``send``, which may empty it once written: ``p`` gives its pieces up,
        so that a request waiting for its reply holds none of them (its messages' JSON, some unpacked)."""
        body = [p.head, *self._conv(p)]
        p.conv = None
        return body

    def _count_batch(self, items: list[_Pending]) -> None:
        """A batch the server took (an error of its own, a 5xx or a timeout, still counts as sent)."""
        self._batches += 1
        self._batch_items += len(items)
        self._batch_max = max(self._batch_max, len(items))

    def _settle(self, results: list[tuple[_Pending, Reply | Failure]]) -> None:
        """Deliver replies, schedule retries, fail the rest; one bad item never affects another."""
        retry: list[tuple[float, _Pending]] = []
        cached: list[tuple[bytes, Reply]] = []
        for p, outcome in results:
            if p.done:  # failed meanwhile (its deadline passed, the gateway closed): the reply comes too late
                continue
            try:
                self._release(p)
                if isinstance(outcome, Reply):
                    self._prompt_tokens += outcome.usage.prompt_tokens
                    self._completion_tokens += outcome.usage.completion_tokens
                    if p.cacheable:
                        cached.append((p.key, outcome))
                    self._finish(p, reply=outcome)
                    continue
                if outcome.kind == "auth":
                    self._on_auth(outcome)
                    self._finish(p, error=self._auth_error(p.ident))
                    continue
                if outcome.retryable and p.attempts <= self.settings.max_retries and (p.tasks or p.owner is not None):
                    retry.append((self._backoff(p.attempts, outcome.retry_after), p))
                    p.attempts += 1
                    p.state = _RETRY
                    self._retries += 1
                    kind = outcome.kind
                    self._retried[kind] = self._retried.get(kind, 0) + 1
                    if kind not in self._first_retried:
                        self._first_retried[kind] = outcome.message
                    continue
                message = outcome.message
                if p.attempts > 1:
                    message += f" (after {p.attempts} attempts)"
                self._finish(p, error=LLMError(message, kind=outcome.kind, request=p.ident, status=outcome.status))
            except Exception:
                log.exception("LLM gateway: unexpected error delivering %s", p.ident)
                self._finish(p, error=LLMError("internal error in the LLM gateway (see the log)", kind="internal",
                                               request=p.ident))
        if cached:
            self._cache.put_many(cached)  # after the waiters are woken: they need not wait for the store
        if retry and self._nursery is not None:
            self._nursery.start_soon(self._retry_later, retry)

    def _release(self, p: _Pending) -> None:
        """``p`` leaves the wire: give back its in-flight capacity."""
        if p.state != _SENT:
            return
        p.state = _RETRY
        self._in_flight -= 1
        left = self._in_flight_by_model[p.model] - 1
        if left:
            self._in_flight_by_model[p.model] = left
        else:
            del self._in_flight_by_model[p.model]
        if self._wake_on_free:
            self._wake.set()

    def _finish(self, p: _Pending, *, reply: Reply | None = None, error: LLMError | None = None) -> None:
        if p.state == _SENT:
            self._release(p)
        elif p.state == _QUEUED:
            self._queued -= 1
        p.state = _DONE
        p.reply = reply
        p.error = error
        self._live.discard(p)
        if self._flights.get(p.key) is p:
            del self._flights[p.key]
        p.done = True
        owner = p.owner
        if owner is not None and owner is not True:
            owner.cancel()
        tasks = p.tasks
        if tasks:
            for task in tasks:
                _reschedule(task)
            tasks.clear()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        base = min(s.backoff_max_s, s.backoff_s * (2 ** (attempt - 1)))
        delay = base / 2 + self._rng.random() * base / 2  # "equal jitter": never less than half the backoff
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.retry_after_max_s))
        return delay

    async def _retry_later(self, retry: list[tuple[float, _Pending]]) -> None:
        start = trio.current_time()
        retry.sort(key=lambda entry: entry[0])
        for delay, p in retry:
            await trio.sleep_until(start + delay)
            if p.state != _RETRY:
                continue  # abandoned meanwhile, or failed by a 401
            if p.tasks:
                self._enqueue(p)
            else:
                self._abandon(p)

    def _unsupported(self, items: list[_Pending]) -> None:
        if not self._unsupported_logged:
            self._unsupported_logged = True
            log.debug("LLM gateway: the backend has no batch endpoint; sending requests one by one")
        for p in items:
            self._requeue(p)

    def _requeue(self, p: _Pending) -> None:
        """``p`` goes back to the queue from the wire (no attempt counted), unless nobody waits for it."""
        self._release(p)
        if p.tasks:
            self._enqueue(p)
        else:
            self._abandon(p)

    def _on_auth(self, failure: Failure) -> None:
        if self._auth is not None:
            return
        self._auth = failure
        log.error("LLM gateway: %s. Check the API key (OPENAI_API_KEY); no further request will be sent.",
                  failure.message)
        self._fail_waiting(self._auth_error(None))

    def _auth_error(self, ident: str | None) -> LLMError:
        failure = self._auth
        assert failure is not None
        return LLMError(f"{failure.message} (not retried; requests fail until the key is fixed)", kind="auth",
                        request=ident, status=failure.status)

    # ------------------------------------------------------------ statistics

    def _sample(self, latency: float) -> None:
        """Reservoir sampling (algorithm R): a fixed-size uniform sample of every latency."""
        self._latency_seen += 1
        samples = self._latencies
        if len(samples) < self.settings.latency_samples:
            samples.append(latency)
        else:
            j = self._rng.randrange(self._latency_seen)
            if j < len(samples):
                samples[j] = latency

    def statistics(self) -> GatewayStatistics:
        """A frozen snapshot of the counters."""
        ordered = sorted(self._latencies)

        def quantile(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        connections = getattr(self._backend, "connections", None)
        opened, peak = connections() if connections is not None else (0, 0)
        return GatewayStatistics(
            requests=self._requests, hits_hot=self._hits_hot, hits_store=self._hits_store, misses=self._misses,
            uncacheable=self._uncacheable, coalesced=self._coalesced, sent=self._sent, http_requests=self._http,
            batches=self._batches, batch_size_mean=self._batch_items / self._batches if self._batches else 0.0,
            batch_size_max=self._batch_max, streamed=self._streamed, retries=self._retries,
            errors_by_kind=dict(self._errors), first_errors=dict(self._first_errors),
            latency_p50_s=quantile(0.5), latency_p99_s=quantile(0.99),
            in_flight=self._in_flight, queued=self._queued, http_connections_opened=opened,
            http_connections_max=peak, prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens, cache_errors=self._cache.errors,
            batches_refused=self._batches_refused, http_reconnects=getattr(self._backend, "reconnects", 0),
            retries_by_kind=dict(self._retried), first_retries=dict(self._first_retried))

