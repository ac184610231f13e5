"""Shared helpers for the memory tests."""

from __future__ import annotations

import json
import random


def chat_message(i: int, seed: int = 0) -> bytes:
    """A small, compressible, chat-shaped object (distinct for each i)."""
    rng = random.Random(seed * 1_000_003 + i)
    words = ["search", "result", "file", "error", "agent", "token", "value", "cache", "query", "the", "a", "of"]
    return json.dumps({
        "role": rng.choice(["user", "assistant", "tool"]),
        "tool_call_id": f"call_{i:08d}",
        "content": " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))),
    }).encode()
