#!/usr/bin/env python3
"""Lists the product functions longer than LIMIT lines (default 100), longest first, then
their count on the last line.

The rule: in rustfmt-formatted code under protocol/src, agent-lite/src and server/src, a
function runs from its `fn` line to the closing brace at the `fn` line's indentation. Items
under `#[cfg(test)]` (test modules, test-only functions) are left out. A function over the
limit needs a comment saying why (a long match over a table is a reason; ten steps in a row
are ten functions).

Usage: python3 scripts/long-functions.py [LIMIT] [CRATE_SRC ...]
"""
import os
import re
import sys

FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
CFG_TEST = re.compile(r"^(\s*)#\[cfg\(test\)\]")
DEFAULT_DIRS = ("protocol/src", "agent-lite/src", "server/src")


def block_end(lines, i, indent):
    """Index of the line closing the item that starts at line i (same indentation), or of
    the line ending it with `;`."""
    j = i
    while j < len(lines):
        s = lines[j].rstrip()
        if s.endswith("{"):
            break
        if s.endswith(";"):
            return j
        j += 1
    k = j + 1
    while k < len(lines) and lines[k] != indent + "}":
        k += 1
    return k


def long_functions(path, limit):
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    found = []
    i = 0
    while i < len(lines):
        t = CFG_TEST.match(lines[i])
        if t:
            # Skip attributes, then the item they apply to.
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("#["):
                j += 1
            i = block_end(lines, j, t.group(1)) + 1
            continue
        m = FN.match(lines[i])
        if m:
            end = block_end(lines, i, m.group(1))
            if end < len(lines) and lines[end].rstrip().endswith("}"):
                n = end - i + 1
                if n > limit:
                    found.append((n, f"{path}:{i + 1} {m.group(7)}"))
                i = end
        i += 1
    return found


def main():
    args = sys.argv[1:]
    limit = int(args[0]) if args and args[0].isdigit() else 100
    dirs = [a for a in args if not a.isdigit()] or DEFAULT_DIRS
    found = []
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in sorted(files):
                if f.endswith(".rs"):
                    found += long_functions(os.path.join(root, f), limit)
    for n, where in sorted(found, reverse=True):
        print(n, where)
    print(len(found))


if __name__ == "__main__":
    main()
