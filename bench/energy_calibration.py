"""Energy calibration: microseconds of CPU per energy unit, plain instructions against metered ones.

An agent's energy is meant to bound its CPU time, whatever instructions it
runs. The cost table prices plain instructions (a counting loop: load, push,
add, store, lt, jump_if); instructions whose work grows with their operands
(eq on containers, contains, text, json_parse, regular expressions, ...) are
charged on top by the meter (avm.lang.meter). This bench runs each operation
in a loop on a large operand and divides the CPU time of the loop by the
energy it was charged, after subtracting the same loop with the operation
left out (its setup and loop overhead). A metered operation is calibrated
when its figure is within about 3x of the plain loop's, and never more than
3x above it (above: CPU the agent gets without paying for it).

    python bench/energy_calibration.py           one line per operation
    python bench/energy_calibration.py --json    ... and one JSON object last
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import avm

BUDGET = 1e9
TOLERANCE = 3.0

_KI = 1024
_TEXT = f'push "a"\npush {256 * _KI}\ncall repeat 2\nstore t\n'
_LIST = ("push 20000\ncall range 1\nstore l\nload l\ncall reverse 1\nstore r\n"
         "load r\ncall reverse 1\nstore l2\n")  # l2: equal to l, not the same list; r: l reversed
_WIDE = f'push "\\u00df"\npush {128 * _KI}\ncall repeat 2\nstore w\n'  # non-ASCII text
_STRS = 'push "word"\nlist 1\npush 20000\ncall repeat 2\nstore l\n'
_MAP = (f"push {json.dumps(json.dumps({f'k{(i * 7919) % 20011}': i for i in range(20000)}))}\n"
        "call json_parse 1\nstore m\n")


def _doubled(k: int) -> str:
    """A value of 2**k parts in k steps: every level holds the one below twice."""
    return (f"push 1\nstore x\npush 0\nstore i\nbuild:\nload x\nload x\nlist 2\nstore x\n"
            f"load i\npush 1\nadd\nstore i\nload i\npush {k}\nlt\njump_if build\n")


# name: (setup, body, iterations). The body leaves the stack as it found it.
OPERATIONS: dict[str, tuple[str, str, int]] = {
    "eq_flat_list": (_LIST, "load l\nload l2\neq\npop\n", 20),
    "eq_flat_list_differ": (_LIST, "load l\nload r\neq\npop\n", 20),
    "eq_shared_tree": (_doubled(14), "load x\nload x\neq\npop\n", 20),
    "ne_flat_list": (_LIST, "load l\nload l2\nne\npop\n", 20),
    "contains_list_miss": (_LIST, "load l\npush -1\ncall contains 2\npop\n", 40),
    "contains_list_of_lists": ('push 1\nlist 1\npush 20000\ncall repeat 2\nstore l\n',
                               "load l\npush 2\nlist 1\ncall contains 2\npop\n", 20),
    "index_of_miss": (_LIST, "load l\npush -1\ncall index_of 2\npop\n", 40),
    "contains_text": (_TEXT, 'load t\npush "b"\ncall contains 2\npop\n', 40),
    "find_text": (_TEXT, 'load t\npush "ab"\ncall find 2\npop\n', 40),
    "text_flat_list": (_LIST, "load l\ncall text 1\npop\n", 20),
    "text_shared_tree": (_doubled(14), "load x\ncall text 1\npop\n", 20),
    "text_list_of_texts": (_STRS, "load l\ncall text 1\npop\n", 20),
    "concat_list": (_LIST, 'load l\npush ""\nconcat\npop\n', 20),
    "concat_texts": (_TEXT, "load t\nload t\nconcat\npop\n", 40),
    "add_texts": (_TEXT, "load t\nload t\nadd\npop\n", 40),
    "add_lists": (_LIST, "load l\nload l\nadd\npop\n", 40),
    "format_long": (_TEXT, 'push "<{t}>"\nformat\npop\n', 40),
    "format_placeholders": ('push "x"\nstore a\npush "{a}"\npush 1300\ncall repeat 2\nstore f\n',
                            "load f\nformat\npop\n", 40),
    "format_long_template": ('push "x"\nstore a\npush "{a}"\npush 20000\ncall repeat 2\nstore f\n',
                             "load f\nformat\npop\n", 10),
    "eq_small_lists": ("push 1\npush 2\nlist 2\nstore a\npush 1\npush 2\nlist 2\nstore b\n",
                       "load a\nload b\neq\npop\n", 20000),
    "find_text_long_needle": (_TEXT + 'push "a"\npush 40\ncall repeat 2\npush "b"\nconcat\nstore n\n',
                              "load t\nload n\ncall find 2\npop\n", 40),
    "sort_shuffled": ("push " + json.dumps(json.dumps([(i * 7919) % 20011 for i in range(20000)])) +
                      "\ncall json_parse 1\nstore s\n", "load s\ncall sort 1\npop\n", 20),
    "sort_shuffled_texts": ("push " + json.dumps(json.dumps([str((i * 7919) % 20011) for i in range(20000)])) +
                            "\ncall json_parse 1\nstore s\n", "load s\ncall sort 1\npop\n", 20),
    "format_list": (_LIST, 'push "<{l}>"\nformat\npop\n', 20),
    "json_dump_list": (_LIST, "load l\ncall json_dump 1\npop\n", 20),
    "json_dump_tree": (_doubled(14), "load x\ncall json_dump 1\npop\n", 20),
    "json_parse_ints": (_LIST + "load l\ncall json_dump 1\nstore j\n", "load j\ncall json_parse 1\npop\n", 20),
    "json_parse_texts": (_STRS + "load l\ncall json_dump 1\nstore j\n", "load j\ncall json_parse 1\npop\n", 20),
    "json_parse_nested": (('push "[1,2],"\npush 4000\ncall repeat 2\npush "["\nswap\nconcat\npush "1]"\nconcat\n'
                           "store j\n"), "load j\ncall json_parse 1\npop\n", 20),
    "repeat_text": ('push "ab"\nstore t\n', f"load t\npush {128 * _KI}\ncall repeat 2\npop\n", 40),
    "repeat_list": ("push 1\nlist 1\nstore l\n", "load l\npush 20000\ncall repeat 2\npop\n", 40),
    "upper_text": (_TEXT, "load t\ncall upper 1\npop\n", 40),
    "upper_non_ascii": (_WIDE, "load w\ncall upper 1\npop\n", 10),
    "lower_non_ascii": (_WIDE, "load w\ncall lower 1\npop\n", 10),
    "regex_non_ascii": (_WIDE, 'push "b+"\nload w\ncall regex_match 2\npop\n', 10),
    "find_non_ascii": (_WIDE, 'load w\npush "\u00dfb"\ncall find 2\npop\n', 10),
    "split_non_ascii": ('push "\u00e9\u00e9 "\npush 20000\ncall repeat 2\nstore t\n',
                        "load t\ncall split 1\npop\n", 20),
    "strip_text": (_TEXT, "load t\ncall strip 1\npop\n", 40),
    "split_text": ('push "ab "\npush 20000\ncall repeat 2\nstore t\n', "load t\ncall split 1\npop\n", 20),
    "join_texts": (_STRS, 'load l\npush ","\ncall join 2\npop\n', 20),
    "join_ints": (_LIST, 'load l\npush ","\ncall join 2\npop\n', 20),
    "replace_text": (_TEXT, 'load t\npush "a"\npush "b"\ncall replace 3\npop\n', 20),
    "slice_list": (_LIST, "load l\npush 1\ncall slice 2\npop\n", 40),
    "reverse_list": (_LIST, "load l\ncall reverse 1\npop\n", 40),
    "sort_list": (_LIST, "load r\ncall sort 1\npop\n", 20),
    "keys_map": (_MAP, "load m\ncall keys 1\npop\n", 40),
    "values_map": (_MAP, "load m\ncall values 1\npop\n", 40),
    "range_list": ("", "push 20000\ncall range 1\npop\n", 40),
    "sum_list": (_LIST, "load l\ncall sum 1\npop\n", 40),
    "max_list": (_LIST, "load l\ncall max 1\npop\n", 40),
    "append_big_list": (_LIST, "load l\npush 1\nappend\npop\n", 40),
    "set_big_list": (_LIST, "load l\npush 0\npush 1\nset\npop\n", 40),
    "set_big_map": (_MAP, 'load m\npush "k0"\npush 1\nset\npop\n', 40),
    "list_of_deep": ("push 0\n" + "list 1\n" * 90 + "store d\n", "load d\nlist 1\npop\n", 200),
    "regex_match_miss": (_TEXT, 'push "b+"\nload t\ncall regex_match 2\npop\n', 40),
    "regex_match_stars": (_TEXT, 'push "a*a*a*a*b"\nload t\ncall regex_match 2\npop\n', 20),
    "regex_find_all_many": ('push "ab "\npush 20000\ncall repeat 2\nstore t\n',
                            'push "(\\\\w+)\\\\s"\nload t\ncall regex_find_all 2\npop\n', 10),
}


def _program(setup: str, body: str, iterations: int) -> str:
    return (f"{setup}push 0\nstore _n\n_loop:\n{body}load _n\npush 1\nadd\nstore _n\n"
            f"load _n\npush {iterations}\nlt\njump_if _loop\nhalt\n")


def _run(source: str) -> tuple[float, int]:
    """(CPU seconds, milli-units charged) of one run to the end."""
    frame = avm.Frame(avm.compile(source), budget=BUDGET)
    start = time.process_time()
    out = frame.run()
    cpu = time.process_time() - start
    if not isinstance(out, avm.Done):
        raise SystemExit(f"calibration program did not finish: {out!r}\n{source}")
    return cpu, frame.used


def _best(source: str, repeats: int) -> tuple[float, int]:
    runs = [_run(source) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[0][1]


def plain_us_per_energy(repeats: int) -> float:
    """The counting loop of bench/vm_ops.py: 8 plain instructions an iteration."""
    n = 300_000
    source = f"push 0\nstore i\nloop:\nload i\npush 1\nadd\nstore i\nload i\npush {n}\nlt\njump_if loop\nhalt\n"
    cpu, used = _best(source, repeats)
    return cpu * 1e6 / (used / 1000)


def operation_us_per_energy(setup: str, body: str, iterations: int, repeats: int) -> tuple[float, float]:
    """(µs of CPU per energy unit of the operation, energy charged per operation)."""
    cpu, used = _best(_program(setup, body, iterations), repeats)
    cpu0, used0 = _best(_program(setup, "", iterations), repeats)
    energy = (used - used0) / 1000
    return max(cpu - cpu0, 0.0) * 1e6 / max(energy, 1e-9), energy / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the least CPU counts (default 3)")
    parser.add_argument("--only", help="comma-separated operation names")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(OPERATIONS)
    plain = plain_us_per_energy(args.repeats)
    print(f"plain instructions: {plain:.3f} us of CPU per energy unit")
    print(f"{'operation':26} {'us/energy':>10} {'x plain':>8} {'energy/op':>11}")
    rows: dict[str, dict[str, float]] = {}
    for name in names:
        us, energy = operation_us_per_energy(*OPERATIONS[name], repeats=args.repeats)
        ratio = us / plain
        flag = "  CHEAP" if ratio > TOLERANCE else "  dear" if ratio < 1 / TOLERANCE else ""
        rows[name] = {"us_per_energy": round(us, 4), "x_plain": round(ratio, 3), "energy_per_op": round(energy, 3)}
        print(f"{name:26} {us:10.3f} {ratio:8.2f} {energy:11.3f}{flag}")
    worst = max(rows.values(), key=lambda r: r["x_plain"])["x_plain"]
    least = min(rows.values(), key=lambda r: r["x_plain"])["x_plain"]
    print(f"metered operations run {least:.2f}x to {worst:.2f}x the plain loop's CPU per energy unit "
          f"(calibrated: at most {TOLERANCE:g}x)")
    if args.json:
        print(json.dumps({"plain_us_per_energy": round(plain, 4), "max_x_plain": worst, "min_x_plain": least,
                          "operations": rows}))


if __name__ == "__main__":
    main()
