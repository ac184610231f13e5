"""The agent language: compiler, bytecode, interpreter (sans-I/O).

Nothing here imports trio or does I/O.
"""

from avm.lang.code import Code, CodeFormatError
from avm.lang.compiler import compile_source

__all__ = ["Code", "CodeFormatError", "compile_source"]
