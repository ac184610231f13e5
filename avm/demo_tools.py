"""The old name of `avm.demo.tools`, kept so that specs naming ``avm.demo_tools:search`` still load."""

from avm.demo.tools import TOOLS, calculate, evaluate, search, search_notes

__all__ = ["TOOLS", "calculate", "evaluate", "search", "search_notes"]
