"""Server-sent events, and a streamed chat completion assembled into one reply.

`SSEDecoder` is sans-I/O: feed it the bytes as they arrive (split anywhere,
even inside a line or a UTF-8 sequence) and it returns the ``data`` of each
complete event. It follows the SSE rules that matter for LLM streams: lines
end with LF, CRLF or CR; a blank line ends an event; several ``data:`` lines
join with a newline; comments (``:``) and other fields are ignored.

`ChatStream` folds ``chat.completion.chunk`` events into a `Reply`: the
content deltas of choice 0 concatenated, tool-call deltas merged by their
index (the name and id from the first delta, the arguments appended), the
finish reason, and the usage from the chunk that carries it (the last one,
with ``stream_options.include_usage``). A stream that ends before a finish
reason or ``[DONE]`` is a `Failure` ("malformed"), as is an event that is not
JSON.
"""

from __future__ import annotations

import json
from typing import Any

from avm.io.client.backends import Failure, Reply, failure_from_error, parse_usage
from avm.io.request import Usage

__all__ = ["ChatStream", "SSEDecoder"]


class SSEDecoder:
    """Splits a byte stream into the data of its events."""

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event completed by ``chunk``."""
        buf = self._buf + chunk
        if buf.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the next byte
            self._buf = b"\r"
            buf = buf[:-1]
        else:
            self._buf = b""
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop() + self._buf
        return self._lines(lines)

    def close(self) -> list[str]:
        """The data of an event left unterminated at the end of the stream."""
        lines = [self._buf.rstrip(b"\r"), b""] if self._buf else [b""]
        self._buf = b""
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[str]:
        out: list[str] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append("\n".join(data))
                    data.clear()
                continue
            if line[0] == 0x3A:  # ":" a comment
                continue
            field, _, value = line.partition(b":")
            if field != b"data":
                continue
            if value[:1] == b" ":
                value = value[1:]
            try:
                data.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise Failure("malformed", "a server-sent event is not UTF-8") from None
        return out


class ChatStream:
    """Assembles the chunks of a streamed chat completion."""

    __slots__ = ("_calls", "_parts", "done", "events", "finish_reason", "usage")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False
        self.events = 0

    def feed(self, data: str) -> bool:
        """Take one event's data; True once the stream said ``[DONE]``."""
        if data.strip() == "[DONE]":
            self.done = True
            return True
        self.events += 1
        try:
            chunk = json.loads(data)
        except ValueError:
            raise Failure("malformed", "a streamed chunk is not JSON") from None
        if not isinstance(chunk, dict):
            raise Failure("malformed", "a streamed chunk is not a JSON object")
        if "error" in chunk and not chunk.get("choices"):
            raise failure_from_error(chunk["error"])
        usage = chunk.get("usage")
        if usage is not None:
            self.usage = parse_usage(usage)
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        elif not isinstance(choices, list):
            raise Failure("malformed", "a streamed chunk's choices is not a list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise Failure("malformed", "a streamed choice is not an object")
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise Failure("malformed", "a streamed delta is not an object")
            content = delta.get("content")
            if content is not None:
                if type(content) is not str:
                    raise Failure("malformed", "a streamed content delta is not text")
                self._parts.append(content)
            for call in delta.get("tool_calls") or ():
                self._merge_call(call)
            reason = choice.get("finish_reason")
            if reason is not None:
                if type(reason) is not str:
                    raise Failure("malformed", "a streamed finish_reason is not text")
                self.finish_reason = reason
        return False

    def _merge_call(self, call: Any) -> None:
        if not isinstance(call, dict) or type(call.get("index", 0)) is not int:
            raise Failure("malformed", "a streamed tool call delta is not an object with an index")
        slot = self._calls.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                             "function": {"name": "", "arguments": ""}})
        if call.get("id") is not None:
            slot["id"] = call["id"]
        if call.get("type") is not None:
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if not isinstance(function, dict):
            raise Failure("malformed", "a streamed tool call's function is not an object")
        name, arguments = function.get("name"), function.get("arguments")
        if name is not None:
            if type(name) is not str:
                raise Failure("malformed", "a streamed tool name is not text")
            slot["function"]["name"] += name
        if arguments is not None:
            if type(arguments) is not str:
                raise Failure("malformed", "streamed tool arguments are not text")
            slot["function"]["arguments"] += arguments

    def reply(self) -> Reply:
        """The assembled reply; `Failure` if the stream stopped before the reply finished."""
        if self.finish_reason is None:
            if not self.done:
                raise Failure("malformed", "the stream ended before the reply finished")
            reason = "tool_calls" if self._calls else "stop"
        else:
            reason = self.finish_reason
        calls = tuple(self._calls[i] for i in sorted(self._calls))
        return Reply("".join(self._parts), reason, self.usage or Usage(), calls)
