"""A custom tool for examples/research_fleet.toml, which registers it as "tools.py:glossary".

Any module with `@avm.tool` functions can be named in a spec's ``tools``:
by import path (``package.module:function``) or, as here, by a file path
relative to the spec.
"""

from __future__ import annotations

import avm

TERMS = {
    "tide": "the rise and fall of the sea, caused mostly by the Moon's gravity",
    "spring tide": "a tide of extra range, near new and full moon",
    "neap tide": "a tide of small range, near the Moon's first and last quarter",
    "glacier": "a slow river of ice, formed from snow compressed over years",
    "waggle dance": "how a honey bee tells its hive the direction and distance of food",
    "hemocyanin": "the copper-based protein that makes octopus blood blue",
    "generation": "a group of objects of similar age, scanned together by a garbage collector",
    "light-year": "the distance light travels in a year, about 9.46e15 metres",
}


@avm.tool
async def glossary(term: str) -> str:
    """Define a term from the fleet's glossary (tides, glaciers, bees, octopuses, light, memory)."""
    key = term.strip().lower()
    for name, meaning in TERMS.items():
        if name in key or key in name:
            return f"{name}: {meaning}"
    return f"no glossary entry for {term!r}; known terms: {', '.join(sorted(TERMS))}"
