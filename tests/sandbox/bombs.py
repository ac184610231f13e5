"""The resource-bomb corpus: programs written to make one instruction cost far
more than its energy, or to hold far more memory than an agent should.

Each bomb is (source, the outcome kinds it may end in). Under budget 1,000 every
one must end in one of them: BudgetExceeded when energy bounds it, a Fault of
the named kind when a limit does. tests/sandbox checks the outcomes and the
energy; bench/sandbox.py measures the CPU time and memory each one reaches.
"""

from __future__ import annotations

BUDGET = 1000.0

# Build a value of 2**k parts in k steps (every level holds the one below twice), then loop on it.
def _doubled(k: int, body: str) -> str:
    return (f"push 1\nstore x\npush 0\nstore i\nbuild:\nload x\nload x\nlist 2\nstore x\n"
            f"load i\npush 1\nadd\nstore i\nload i\npush {k}\nlt\njump_if build\nloop:\n{body}jump loop\n")


def _loop(setup: str, body: str) -> str:
    return f"{setup}loop:\n{body}jump loop\n"


_MI = 1 << 20
_BIG_TEXT = f'push "x"\npush {_MI}\ncall repeat 2\nstore big\n'
_BIG_LIST = f'{_BIG_TEXT}load big\nlist 1\npush 65536\ncall repeat 2\nstore l\n'

# Two texts of 1 Mi characters that differ only in their last one, alternating in a list of 4,096
# (2 MiB held: the list holds references): comparing the two reads them whole.
_SIMILAR_TEXTS = ('push "x"\npush 1048575\ncall repeat 2\nstore t\nload t\npush "a"\nconcat\n'
                  'load t\npush "b"\nconcat\nlist 2\npush 2048\ncall repeat 2\nstore l\npush null\nstore t\n')

# The same two texts in CJK characters (compared two bytes at a time, in a loop: 10x slower), as a and b.
_SIMILAR_WIDE = ('push "\\u4e00"\npush 1048575\ncall repeat 2\nstore t\nload t\npush "a"\nconcat\nstore a\n'
                 'load t\npush "b"\nconcat\nstore b\npush null\nstore t\n')

BOMBS: dict[str, tuple[str, tuple[str, ...]]] = {
    # regular expressions that backtrack exponentially on a backtracking engine
    "regex_nested_optional": (_loop('push "a"\npush 28\ncall repeat 2\nstore t\n',
                                    'push "(a?){28}a{28}"\nload t\ncall regex_match 2\npop\n'), ("budget",)),
    "regex_stars": (_loop('push "a"\npush 1048575\ncall repeat 2\nstore t\n',
                          'push "a*a*a*a*b"\nload t\ncall regex_find_all 2\npop\n'), ("budget",)),
    "regex_spaces": (_loop('push " "\npush 1048575\ncall repeat 2\nstore t\n',
                           'push "\\\\s*\\\\s*\\\\s*x"\nload t\ncall regex_match 2\npop\n'), ("budget",)),
    "regex_many_matches": (_loop('push "ab "\npush 300000\ncall repeat 2\nstore t\n',
                                 'push "(\\\\w+)\\\\s"\nload t\ncall regex_find_all 2\npop\n'),
                           ("budget", "LimitError")),
    # structural equality and containment over shared parts
    "eq_shared_19": (_doubled(19, "load x\nload x\neq\npop\n"), ("budget", "LimitError")),
    "contains_65536_copies": (_loop(f"{_BIG_LIST}", "load l\npush 1\ncall contains 2\npop\n"), ("budget",)),
    "contains_deep_copies": (_doubled(10, "load x\nlist 1\npush 65536\ncall repeat 2\npush 0\nlist 1\n"
                                          "call contains 2\npop\n"), ("budget",)),
    "index_of_shared": (_doubled(16, "load x\nlist 1\nload x\nlist 1\nload x\nlist 1\nadd\nadd\npush 1\n"
                                     "call index_of 2\npop\n"), ("budget",)),
    # text forms of shared parts
    "text_17_levels": (_doubled(17, "load x\ncall text 1\npop\n"), ("budget", "LimitError")),
    "json_dump_shared": (_doubled(18, "load x\ncall json_dump 1\npop\n"), ("budget", "LimitError")),
    "concat_shared": (_doubled(17, "load x\nload x\nconcat\npop\n"), ("budget", "LimitError")),
    # texts and lists past the size limits (checked before they are made)
    "join_64Gi": (f"{_BIG_LIST}load l\ncall join 1\nreturn\n", ("LimitError", "budget")),
    "text_of_big_list": (f"{_BIG_LIST}load l\ncall text 1\nreturn\n", ("LimitError", "budget")),
    "concat_big_list": (f'{_BIG_LIST}load l\npush ""\nconcat\nreturn\n', ("LimitError", "budget")),
    "format_placeholders": (f'{_BIG_TEXT}push "{{big}}"\npush 349525\ncall repeat 2\nformat\nreturn\n',
                            ("LimitError",)),
    "replace_grows": (f'{_BIG_TEXT}load big\npush "x"\npush "xx"\ncall replace 3\nreturn\n', ("LimitError", "budget")),
    "repeat_huge": ('push "x"\npush 1099511627776\ncall repeat 2\nreturn\n', ("LimitError",)),
    "split_many": (_loop('push "a "\npush 524287\ncall repeat 2\nstore t\n', "load t\ncall split 1\npop\n"),
                   ("LimitError", "budget")),
    "upper_growing": (_loop('push "\\u00df"\npush 1048576\ncall repeat 2\nstore t\n', "load t\ncall upper 1\npop\n"),
                      ("LimitError", "budget")),
    # memory held
    "hold_distinct_texts": (_loop('list 0\nstore l\npush 0\nstore i\n',
                                  f'push "x"\npush {_MI - 16}\ncall repeat 2\nload i\nconcat\nload l\nswap\nappend\n'
                                  "store l\nload i\npush 1\nadd\nstore i\n"), ("MemoryLimit", "budget")),
    "hold_many_lists": (_loop('list 0\nstore l\npush 0\nstore i\n',
                              "load i\npush 65536\ncall range 2\nload l\nswap\nappend\nstore l\n"
                              "load i\npush 1\nadd\nstore i\n"), ("MemoryLimit", "budget")),
    "append_quadratic": (_loop("list 0\nstore l\n", "load l\npush 1\nappend\nstore l\n"), ("budget", "LimitError")),
    "sort_big": (_loop("push 65536\npush 0\ncall range 2\nstore l\n", "load l\ncall reverse 1\ncall sort 1\npop\n"),
                 ("budget",)),
    # ordering texts that share all but their last character (each comparison reads them whole)
    "sort_long_texts": (_loop(_SIMILAR_TEXTS, "load l\ncall sort 1\npop\n"), ("budget",)),
    "max_long_texts": (_loop(_SIMILAR_TEXTS, "load l\ncall max 1\npop\n"), ("budget",)),
    "lt_long_texts": (_loop(_SIMILAR_WIDE, "load a\nload b\nlt\npop\n"), ("budget",)),
    "ge_long_texts": (_loop(_SIMILAR_WIDE, "load a\nload b\nge\npop\n"), ("budget",)),
    "eq_long_texts": (_loop(_SIMILAR_WIDE, "load a\nload b\neq\npop\n"), ("budget",)),
    # json
    "json_items": (('push "0,"\npush 524287\ncall repeat 2\npush "["\nswap\nconcat\npush "0]"\nconcat\n'
                    "call json_parse 1\nreturn\n"), ("LimitError",)),
    "json_deep": ('push "["\npush 349525\ncall repeat 2\ncall json_parse 1\nreturn\n',
                  ("ValueError", "LimitError", "budget")),
    "json_101_deep": (('push "["\npush 101\ncall repeat 2\npush "]"\npush 101\ncall repeat 2\nconcat\n'
                       "call json_parse 1\nreturn\n"), ("LimitError",)),
    "json_parse_loop": (_loop('push "1,"\npush 30000\ncall repeat 2\npush "["\nswap\nconcat\npush "1]"\nconcat\n'
                              'store t\n',
                              "load t\ncall json_parse 1\npop\n"), ("budget",)),
    # deep values
    "deep_list": ("push 0\n" + "list 1\n" * 150 + "return\n", ("LimitError", "budget")),
    "deep_map": ("push 0\n" + "store v\npush k\nload v\nmap 1\n" * 150 + "return\n", ("LimitError", "budget")),
    "deep_append": (_loop("list 0\nstore v\n", "list 0\nload v\nappend\nstore v\n"), ("LimitError", "budget")),
    "deep_set": (_loop("map 0\nstore v\n", "map 0\npush k\nload v\nset\nstore v\n"), ("LimitError", "budget")),
}
