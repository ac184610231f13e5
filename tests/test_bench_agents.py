"""bench/agents.py: a tiny run of every system end to end, and the README's table made from the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import agents  # noqa: E402  (bench/agents.py)


def test_every_system_runs_the_workload_to_its_end():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "agents.py"), "--agents", "4", "--latencies", "0.05",
                             "--turns", "2", "--timeout", "60", "--no-save", "--json"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = {run["system"]: run for run in report["runs"]}
    assert set(runs) == {"avm", "asyncio", "threads", "processes"}
    for system, run in runs.items():
        assert run["complete"] and run["done"] == 4 and run["llm_calls"] == 4 * 2, (system, run)
        assert 0 < run["efficiency"] <= 1.05 and run["cpu_ms_per_call"] > 0 and run["p99_done_s"] > 0
    assert runs["avm"]["cache_pass"]["cache_hit_rate"] == 1.0  # the same agents again at temperature 0


def test_the_readmes_table_is_the_one_the_newest_json_makes():
    text = (ROOT / "README.md").read_text()
    section = text.split(agents.TABLE_START, 1)[1].split(agents.TABLE_END, 1)[0]
    newest = agents.newest_report()
    if newest is None:
        assert section.strip() == "(not measured yet)"
        return
    expected = agents.readme_table(json.loads(newest.read_text()), newest.name)
    assert agents.TABLE_START + section + agents.TABLE_END == expected, "run python bench/agents.py --readme"
    for chart in json.loads(newest.read_text()).get("charts", []):
        assert (ROOT / "bench" / "results" / chart).is_file()
