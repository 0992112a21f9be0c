#!/usr/bin/env python3
"""Structure checks that are cheap to run and expensive to lose.

1. No file-level import cycle inside a crate. A file depends on another when it names it
   through `crate::...` or `super::...` (in a `use` or inline in code): `crate::store::now_ms`
   names the file of `store` (the deepest module of the path that has a file). A module's own
   children named relatively (`mod x;`, `use x::...`, `self::x`) are its parts, not imports;
   the crate root's `use crate::...` are imports like any other. `#[cfg(test)]` items are
   left out.
2. Layering of the server: each top-level module sits in a layer (SERVER_LAYERS, top
   first), and a file imports only files of its own layer or of layers below it. The parts
   below the wiring and the HTTP layer (`app.rs`, `state.rs`, `api/`, `quickstart.rs`)
   never name `AppState`.
3. Prints the product functions over 100 lines (see scripts/long-functions.py).

Usage: python3 scripts/check-structure.py [CRATE ...]   (default: every crate that must pass)
Exit status 1 when a check fails.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CRATES = ["protocol", "agent-lite", "server"]
CRATES_THAT_MUST_PASS = ALL_CRATES
# Server files allowed to name AppState: the wiring and the HTTP layer it hands state to.
APPSTATE_ALLOWED = re.compile(r"^(lib\.rs|app\.rs|state\.rs|quickstart\.rs|main\.rs|api/.*)$")
# The server's layers, top first (see docs/architecture.md); "" is the crate root.
SERVER_LAYERS = [
    ("wiring and HTTP", {"", "app", "state", "quickstart", "api"}),
    ("stack deployment", {"deploy"}),
    ("rollouts", {"rollouts"}),
    ("commands", {"commands", "updates"}),
    ("fleet", {"fleet"}),
    ("hosts", {"hosts"}),
    ("agents", {"agents"}),
    ("cluster", {"cluster"}),
    ("parts", {"store", "audit", "auth", "accounts", "leases", "metrics", "feed", "crypto",
               "forwarded", "reply", "error", "config", "stacks", "releases", "labels",
               "enrolment", "tls", "connector"}),
]


def module_files(src):
    """Maps module paths (tuples) to file paths relative to src."""
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src).replace(os.sep, "/")
            parts = rel[:-3].split("/")
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            mods.setdefault(tuple(parts), rel)
    return mods


def strip_tests_and_comments(text):
    """Drops comments, string contents and #[cfg(test)] items (by brace matching)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if text[i] == '"' and not (i > 0 and text[i - 1] == "'"):
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
            continue
        if text[i] == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + len(hashes) + 2)
            out.append('""')
            i = n if j < 0 else j + len(end)
            continue
        if text.startswith("#[cfg(test)]", i):
            # Skip the attribute and the item it applies to.
            j = i + len("#[cfg(test)]")
            depth = 0
            while j < n:
                c = text[j]
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                elif c == ";" and depth == 0:
                    j += 1
                    break
                j += 1
            i = j
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


PATH = re.compile(r"\b(crate|super)((?:\s*::\s*(?:super|[A-Za-z_][A-Za-z0-9_]*))+)")
USE = re.compile(r"\buse\s+(crate|super)\s*::\s*(.*?);", re.S)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"\bas[A-Za-z_][A-Za-z0-9_]*", "", tree)

    def walk(s):
        # split at top-level commas
        parts, depth, cur = [], 0, ""
        for c in s:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            if c == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += c
        if cur:
            parts.append(cur)
        res = []
        for p in parts:
            m = re.match(r"^(.*?)::\{(.*)\}$", p)
            if m:
                res += [m.group(1) + "::" + x for x in walk(m.group(2))]
            elif p.startswith("{") and p.endswith("}"):
                res += walk(p[1:-1])
            else:
                res.append(p)
        return res

    return walk(tree)


def resolve(base, segs, mods):
    """The deepest module with a file named by `segs` from module `base`."""
    cur = list(base)
    for s in segs:
        if s == "super":
            cur = cur[:-1]
            continue
        if tuple(cur + [s]) in mods:
            cur.append(s)
        else:
            break
    return tuple(cur)


def edges_of(crate):
    src = os.path.join(ROOT, crate, "src")
    mods = module_files(src)
    edges = {}
    for mod, rel in mods.items():
        if rel == "main.rs":
            continue
        text = strip_tests_and_comments(open(os.path.join(src, rel), encoding="utf-8").read())
        paths = []
        for m in USE.finditer(text):
            for p in expand_use(m.group(2)):
                paths.append((m.group(1), p))
        for m in PATH.finditer(USE.sub("", text)):
            paths.append((m.group(1), re.sub(r"\s", "", m.group(2)).lstrip(":")))
        targets = set()
        for kind, p in paths:
            segs = [s for s in p.split("::") if s and s not in ("self", "*")]
            if kind == "crate":
                t = resolve((), segs, mods)
            else:
                t = resolve(mod[:-1], segs, mods)
            if t != mod and t in mods:
                targets.add(t)
        edges[mod] = targets
    return mods, edges


def cycles(mods, edges):
    """Strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(mods, m):
    return mods[m]


def check_layers(mods, edges):
    """Every file's imports stay in its layer or below it."""
    def layer(m):
        top = m[0] if m else ""
        for i, (_, names) in enumerate(SERVER_LAYERS):
            if top in names:
                return i
        return None

    ok = True
    for m in sorted(mods):
        if mods[m] == "main.rs":
            continue
        if layer(m) is None:
            ok = False
            print(f"check-structure: server: {mods[m]} is in no layer (add its module to SERVER_LAYERS)", file=sys.stderr)
            continue
        for t in sorted(edges.get(m, ())):
            if layer(t) is not None and layer(t) < layer(m):
                ok = False
                print(f"check-structure: server: {mods[m]} ({SERVER_LAYERS[layer(m)][0]}) imports "
                      f"{mods[t]} ({SERVER_LAYERS[layer(t)][0]}), a layer above it", file=sys.stderr)
    return ok


def check_crate(crate):
    mods, edges = edges_of(crate)
    ok = True
    for comp in cycles(mods, edges):
        ok = False
        files = sorted(name(mods, m) for m in comp)
        print(f"check-structure: {crate}: import cycle between {', '.join(files)}", file=sys.stderr)
        for m in sorted(comp):
            for t in sorted(edges[m]):
                if t in comp:
                    print(f"    {mods[m]} -> {mods[t]}", file=sys.stderr)
    if crate == "server":
        ok = check_layers(mods, edges) and ok
        src = os.path.join(ROOT, crate, "src")
        for rel in sorted(mods.values()):
            if APPSTATE_ALLOWED.match(rel):
                continue
            text = strip_tests_and_comments(open(os.path.join(src, rel), encoding="utf-8").read())
            if re.search(r"\bAppState\b", text):
                ok = False
                print(f"check-structure: server: {rel} names AppState (only the wiring and api/ may)", file=sys.stderr)
    n_files = len(mods)
    n_edges = sum(len(v) for v in edges.values())
    print(f"check-structure: {crate}: {n_files} files, {n_edges} file imports, {'no cycle' if ok else 'FAILED'}")
    return ok


def main():
    crates = sys.argv[1:] or CRATES_THAT_MUST_PASS
    ok = all([check_crate(c) for c in crates])
    if not sys.argv[1:]:
        for c in ALL_CRATES:
            if c not in crates:
                print(f"check-structure: {c}: not checked yet (its split is in progress)")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "long-functions.py"), "100"],
                         capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.strip().split("\n")
    print(f"check-structure: product functions over 100 lines: {lines[-1]}")
    for l in lines[:-1]:
        print(f"    {l}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
