"""A GBNF grammar of the agent language, built from the instruction table.

GBNF is the grammar format of llama.cpp-style servers: given this grammar, a
server can only sample text that is a syntactically valid AVM program. (The
compiler still checks what a context-free grammar cannot: labels defined once
and before use, stack depths, builtin arities, guarded sections that pair up
and that no jump enters but at their guard.)
"""

from __future__ import annotations

from avm.lang import opcodes as O
from avm.lang.builtins import REGISTRY

_OPERAND_RULE = {
    O.CONST: "literal",
    O.NAME: "ident",
    O.LABEL: "ident",
    O.COUNT: "count",
    O.BUILTIN: "builtin",
    O.TOOL: "toolname",
    O.ENERGY: "energy",
    O.FIELD: "field",
}


def _alts(words: list[str]) -> str:
    return " | ".join(f'"{w}"' for w in words)


def gbnf() -> str:
    """The grammar text; its start rule is ``root``."""
    instr_alts: list[str] = []
    for info in O.OPS:
        if info.operands == (O.MESSAGE,):
            instr_alts.append(f'"{info.name}" message?')
            continue
        parts = [f'"{info.name}"'] + [f"sp {_OPERAND_RULE[k]}" for k in info.operands]
        instr_alts.append(" ".join(parts))
    rules = [
        "# AVM agent language (GBNF). One instruction or label per line.",
        'root ::= line*',
        'line ::= sp? (stmt sp?)? comment? "\\n"',
        'stmt ::= label | instr',
        'label ::= ident ":"',
        "instr ::= " + "\n    | ".join(instr_alts),
        'comment ::= "#" [^\\n]*',
        'sp ::= [ \\t]+',
        'ident ::= [A-Za-z_] [A-Za-z0-9_]*',
        'toolname ::= [A-Za-z_] [A-Za-z0-9_.-]*',
        'literal ::= number | "true" | "false" | "null" | word | string',
        'number ::= "-"? [0-9]+ ("." [0-9]+)? ([eE] [+-]? [0-9]+)?',
        'word ::= [A-Za-z_] [A-Za-z0-9_.:/-]*',
        'string ::= "\\"" (strchar | escape)* "\\""',
        'strchar ::= [^"\\\\\\n\\r]',
        'escape ::= "\\\\" (["\\\\ntr] | "u" hex hex hex hex)',
        'hex ::= [0-9a-fA-F]',
        'count ::= [0-9] [0-9]?',
        'energy ::= [0-9]+ ("." [0-9]+)?',
        "field ::= " + _alts(list(O.OBSERVE_FIELDS)),
        "builtin ::= " + _alts(sorted(REGISTRY)),
        'message ::= sp (string | msgword (sp msgword)*)',
        'msgword ::= [^ \\t\\n\\r"#]+',
    ]
    return "\n".join(rules) + "\n"
