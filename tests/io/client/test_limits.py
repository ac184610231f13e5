"""The open-file limit is raised for the connections a pool needs (in a subprocess: limits are per process)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, resource, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
from avm.io.client.limits import RESERVED, make_room
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
print("fits", make_room(100))
print("raised", make_room(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 1000 + RESERVED)
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))  # now the hard limit is low too
print("capped", make_room(1000))
"""


def test_make_room_raises_the_soft_limit_and_says_when_it_cannot():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    assert "fits 100" in lines and "raised 1000 True" in lines
    assert "capped 44" in lines  # 300 - 256 reserved
    assert any("leaves room for 44 LLM connections, not 1000" in line for line in lines)
