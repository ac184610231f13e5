"""The one tree of AVM errors: every error AVM raises on purpose is an `AvmError`.

    AvmError
    ├── ProgramError              a fault of an agent's program, not of AVM
    │   ├── CompileError          source that does not compile (line, column, caret)
    │   ├── CodeFormatError       bytes that are not an encoded program (avm.lang.code; also a ValueError)
    │   ├── SnapshotError         a snapshot that is malformed or for another program
    │   ├── MessageError          an llm operand that is not a message (avm.conversation; also a ValueError)
    │   └── ToolDenied            a call of a tool the agent was not granted (avm.tools.registry)
    ├── StoreError                the content-addressed store
    │   ├── NotFound              a ref the store does not hold (also a KeyError)
    │   ├── CorruptObject         stored bytes whose digest does not match their ref
    │   ├── Erased                an object erased on request: a tombstone stands in its place
    │   ├── JournalError          a journal whose hash chain is broken (avm.journal.entry)
    │   ├── StoreFormatError      a directory that is not an AVM store, or of another version
    │   └── ValueFormatError      bytes that are not a canonical encoded value (avm.memory.values)
    ├── VMError                   the VM used wrongly: a bad setting, spawn after exit... (avm.kernel.settings)
    │   └── GrantError            a grant of a tool nobody registered (also a ToolDefinitionError)
    ├── AgentError                an agent that ended without a value: AgentHandle.result() (avm.kernel.record)
    ├── ToolError                 raised inside a tool; reaches the program as an error value (avm.tools.registry)
    ├── ToolDefinitionError       a function that cannot be a tool (avm.tools.registry)
    ├── FrameStateError           a frame driven out of order by its host (avm.lang.frame)
    ├── RequestError              an LLM request that cannot be sent: a bad parameter or role (avm.io.request)
    ├── Failure                   one failed attempt at an LLM request, inside the client (avm.io.client.backends)
    ├── LLMError                  an LLM request the gateway could not answer (avm.io.gateway)
    ├── LLMServerError            the embedded LLM server cannot start or serve (avm.io.embedded.faults)
    │   └── BadRequest            a request it answers 400 (avm.io.embedded.replies)
    ├── SpecError                 a run spec that cannot be run, naming the file and place (avm.app.spec.model)
    ├── LaunchError               `avm run` cannot start: the store, the endpoint, the model (avm.app.launcher)
    ├── CliError                  a user's mistake on the command line: one line, exit 2 (avm.app.cli)
    └── InternalError             a bug in AVM itself: an invariant that did not hold

The interpreter's own signals never leave a frame and are not in the tree:
`avm.lang.values.VMFault` becomes the program's `Fault`, `avm.lang.meter.OutOfEnergy` its
`BudgetExceeded`; the HTTP client's transport signals (`avm.io.client.h1.ProtocolError`,
`avm.io.client.http.HTTPError`, `avm.io.client.h2.Refused`) become a `Failure` there. Errors
raised by the libraries AVM uses (lmdb, zstandard, httpx) are caught at the edge and re-raised as
one of these with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class AvmError(Exception):
    """Base of every error AVM raises on purpose."""


class ProgramError(AvmError):
    """An error in an agent's program (as opposed to a bug in AVM)."""


class CompileError(ProgramError):
    """Source text that does not compile.

    ``line`` and ``column`` are 1-based; ``source_line`` is the offending line
    of source, rendered under the message with a caret at ``column``.
    """

    def __init__(self, message: str, line: int, column: int = 1, source_line: str | None = None):
        self.message = message
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self.render())

    def render(self) -> str:
        head = f"line {self.line}, column {self.column}: {self.message}"
        if self.source_line is None:
            return head
        caret = " " * (self.column - 1) + "^"
        return f"{head}\n    {self.source_line}\n    {caret}"


class SnapshotError(ProgramError):
    """A frame snapshot that cannot be restored (malformed, or another program's)."""


class StoreError(AvmError):
    """Base of the content-addressed store's errors."""


class NotFound(StoreError, KeyError):
    """The store holds no object with this ref."""

    def __init__(self, ref: object):
        self.ref = ref
        hexref = ref.hex() if isinstance(ref, (bytes, bytearray)) else str(ref)
        super().__init__(f"no object {hexref} in the store")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Erased(StoreError):
    """The object was erased (`ContentStore.erase`, `avm erase`): a tombstone stands in its place."""

    def __init__(self, ref: object):
        self.ref = ref
        super().__init__(f"object {getattr(ref, 'hex', lambda: ref)()} was erased")


class CorruptObject(StoreError):
    """Bytes read from a tier do not hash to the ref they were stored under."""

    def __init__(self, ref: object, tier: str):
        self.ref = ref
        self.tier = tier
        hexref = ref.hex() if isinstance(ref, (bytes, bytearray)) else str(ref)
        super().__init__(f"object {hexref} is corrupt in the {tier} tier (digest mismatch)")


class StoreFormatError(StoreError):
    """A directory that is not an AVM store, or one of an unknown format version."""


class LLMError(AvmError):
    """An LLM request the gateway could not answer.

    ``kind`` says what went wrong, so that callers can decide without parsing
    the message: ``"auth"`` (the key was refused; never retried),
    ``"rate_limit"``, ``"server"`` (5xx), ``"timeout"``, ``"connection"``,
    ``"malformed"`` (a body that is not the JSON expected), ``"bad_request"``
    (4xx, or a request the gateway cannot encode), ``"config"`` (no endpoint
    configured), ``"cancelled"`` (the gateway closed first) or ``"internal"``.
    ``request`` names the request (its model and the first 12 hex digits of
    its cache key, e.g. ``"avm-embedded/3fa2c1d4e5f6"``, or ``#N`` for a
    request that can never be cached, which is not keyed) and ``status`` is
    the HTTP status when there was one. The message names the request too,
    and never holds the API key.
    """

    def __init__(self, message: str, *, kind: str, request: str | None = None, status: int | None = None):
        self.message = message
        self.kind = kind
        self.request = request
        self.status = status
        super().__init__(f"LLM request {request}: {message}" if request else message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_llm_error, (self.message, self.kind, self.request, self.status))


def _rebuild_llm_error(message: str, kind: str, request: str | None, status: int | None) -> LLMError:
    return LLMError(message, kind=kind, request=request, status=status)


class InternalError(AvmError):
    """A bug in AVM: an invariant that should always hold did not."""


@contextmanager
def lone_exception() -> Iterator[None]:
    """Let a trio nursery's exception group holding one plain exception out as that exception.

    The VM, the gateway and the embedded server own nurseries inside the
    caller's ``async with``; a caller's own error should come out as itself.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            lone = group.exceptions[0]
            raise lone from lone.__cause__
        raise
