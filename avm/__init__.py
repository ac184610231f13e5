"""AVM: a green-thread agent virtual machine.

Public names are re-exported here explicitly; ``__all__`` is sorted.
"""

from avm.errors import (
    AvmError,
    CompileError,
    CorruptObject,
    InternalError,
    NotFound,
    ProgramError,
    SnapshotError,
    StoreError,
    StoreFormatError,
)
from avm.io.tools import Tool, ToolDenied, ToolError, ToolRegistry, tool
from avm.lang.code import Code, CodeFormatError
from avm.lang.compiler import compile_source as compile
from avm.lang.disasm import disassemble
from avm.lang.frame import Frame, FrameStateError
from avm.lang.grammar import gbnf
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault, Outcome, Stalled
from avm.memory import ContentStore, Ref, StoreStatistics, TierStatistics, ValueFormatError

__version__ = "0.1.0"

__all__ = [
    "AvmError",
    "BudgetExceeded",
    "Code",
    "CodeFormatError",
    "CompileError",
    "ContentStore",
    "CorruptObject",
    "Done",
    "Effect",
    "Fault",
    "Frame",
    "FrameStateError",
    "InternalError",
    "NotFound",
    "Outcome",
    "ProgramError",
    "Ref",
    "SnapshotError",
    "Stalled",
    "StoreError",
    "StoreFormatError",
    "StoreStatistics",
    "TierStatistics",
    "Tool",
    "ToolDenied",
    "ToolError",
    "ToolRegistry",
    "ValueFormatError",
    "compile",
    "disassemble",
    "gbnf",
    "tool",
]
