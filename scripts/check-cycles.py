#!/usr/bin/env python3
"""Lists file-level import cycles inside each crate and exits non-zero when there is one.

    python3 scripts/check-cycles.py                      # protocol/src agent-lite/src server/src
    python3 scripts/check-cycles.py agent-lite/src -v    # one crate, printing every edge

A file imports another when it names an item of that file's module: in a `use` tree or in
an expression path starting with `crate::`, `super::`, `self::` or a child module declared
in the file. A path is resolved to the deepest module that has a file of its own (items of
inline modules belong to their file). Declaring a module (`mod x;`) is not an import, and
`#[cfg(test)]` items are left out (as the long-function count does). Re-exports count where
they are written: code inside the crate imports from the module that defines an item, not
from the crate root's re-exports, or the root and that file form a cycle.
"""
import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_items(text):
    """Removes `#[cfg(test)]` items (a module or a function with its braces, or a `use`)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = m.end()
        semi, brace = text.find(";", j), text.find("{", j)
        if brace < 0 or (0 <= semi < brace):
            i = semi + 1
            continue
        depth, k = 0, brace
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        out.append("\n" * text.count("\n", m.start(), k))
        i = k + 1
    out.append(text[i:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{self, D as E}}` -> [[a, b], [a, c], [a, c, D]] (renames and globs dropped)."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    paths = []

    def walk(prefix, s):
        depth, parts, cur = 0, [], ""
        for ch in s:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        parts.append(cur)
        for p in parts:
            if not p:
                continue
            if "{" in p:
                head, rest = p.split("{", 1)
                head = [x for x in head.split("::") if x]
                walk(prefix + head, rest[: rest.rfind("}")])
            else:
                segs = [x for x in p.split("::") if x and x != "*"]
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                paths.append(prefix + segs)

    walk([], tree)
    return paths


def module_files(src):
    """{module path tuple: file} for a crate's src folder (lib.rs is the root)."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel == ["lib"]:
                mods[()] = path
            elif rel == ["main"] or rel[0] == "bin":
                continue  # a binary crate root uses the library by its crate name
            elif rel[-1] == "mod":
                mods[tuple(rel[:-1])] = path
            else:
                mods[tuple(rel)] = path
    return mods


def edges_of(module, path, mods):
    text = drop_test_items(strip_comments_and_strings(open(path, encoding="utf-8").read()))
    children = set(re.findall(r"\bmod\s+(" + IDENT + r")\s*;", text))
    found = []

    def absolute(segs):
        if not segs:
            return None
        head, rest = segs[0], segs[1:]
        if head == "crate":
            return list(rest)
        base = list(module)
        if head in ("self", "super"):
            while segs and segs[0] in ("self", "super"):
                if segs[0] == "super":
                    if not base:
                        return None
                    base.pop()
                segs = segs[1:]
            return base + list(segs)
        if head in children:
            return base + list(segs)
        return None

    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for segs in expand_use(m.group(1)):
            found.append(absolute(segs))
    pattern = r"(?<![\w:])((?:crate|super|self|" + IDENT + r")(?:::" + IDENT + r")+)"
    for m in re.finditer(pattern, re.sub(r"\buse\s+[^;]+;", "", text)):
        found.append(absolute(m.group(1).split("::")))
    targets = set()
    for segs in found:
        if segs is None:
            continue
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in mods:
                target = mods[tuple(segs[:k])]
                if target != path:
                    targets.add(target)
                break
    return targets


def cycles(graph):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv):
    verbose = "-v" in argv
    srcs = [a for a in argv if not a.startswith("-")] or ["protocol/src", "agent-lite/src", "server/src"]
    bad = 0
    for src in srcs:
        mods = module_files(src)
        if not mods:
            print(f"check-cycles: {src} has no Rust files", file=sys.stderr)
            return 2
        graph = {p: edges_of(m, p, mods) for m, p in mods.items()}
        if verbose:
            for f in sorted(graph):
                for t in sorted(graph[f]):
                    print(f"{f} -> {t}")
        found = cycles(graph)
        for comp in found:
            inner = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
            print(f"cycle in {src}: " + "; ".join(inner))
        bad += len(found)
        print(f"check-cycles: {src}: {len(graph)} files, {sum(map(len, graph.values()))} imports, {len(found)} cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
