#!/usr/bin/env python3
"""Import cycles between the modules of each crate.

A module refers to another through `crate::a::b` or `super::` paths
(`use super::*` included), and to the module that defines a type it names
through a `pub use` re-export. Modules in one cycle (a strongly connected
component of that graph) are coupled both ways; a cycle is allowed only
within one module and the files it is split into (one of the cycle's
modules is an ancestor of all the others: a parent and its children may
share private helpers), never when it passes through a module outside
that subtree. The cycles that
exist today are listed in `.ci/import-cycles.baseline` (one cycle per
line: its modules, sorted, space-separated); this fails (exit 1) when a
module joins a cycle that the baseline does not list, and says when a
listed cycle has shrunk or gone, so the baseline can be tightened.

Usage: python3 .ci/import-cycles.py [--write-baseline]
"""
import os
import re
import sys

CRATES = ["protocol/src", "core/src", "actors/src", "src", "loadtest/src"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, ".ci", "import-cycles.baseline")
TEST_MOD_RE = re.compile(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{")
USE_REL_RE = re.compile(r"\buse\s+([a-z_][a-z0-9_]*)((?:::[a-z_][a-z0-9_]*)*)::")
GLOB_SUPER_RE = re.compile(r"\buse\s+super::\*\s*;")
PATH_RE = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")


def modules(src):
    """module path (tuple) -> file, for every .rs file of a crate."""
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def resolve(mods, path):
    """The longest module that `path` (a tuple) starts with."""
    for n in range(len(path), -1, -1):
        if path[:n] in mods:
            return path[:n]
    return ()


USE_ITEMS_RE = re.compile(
    r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)*)::(?:\{([^}]*)\}|([A-Z][A-Za-z0-9_]*))"
)
REEXPORT_RE = re.compile(
    r"pub(?:\([a-z]+\))?\s+use\s+((?:crate|self|super|[a-z_][a-z0-9_]*)(?:::[a-z_][a-z0-9_]*)*)::"
    r"(?:\{([^}]*)\}|([A-Z][A-Za-z0-9_]*))\s*;"
)


def relative(mods, m, kind, parts):
    """The module `kind::parts` names, seen from module `m`."""
    if kind == "crate":
        return resolve(mods, parts)
    ups = (1 if kind == "super" else 0) + len([p for p in parts if p == "super"])
    rest = tuple(p for p in parts if p not in ("super", "self"))
    return resolve(mods, m[: max(len(m) - ups, 0)] + rest)


def items(group):
    """Item names (types, traits) in a `{...}` use group or a single name."""
    return [
        i.split(" as ")[0].strip().split("::")[-1]
        for i in group.split(",")
        if i.strip() and i.strip().split("::")[-1][:1].isupper()
    ]


def reexports(mods, texts):
    """(module, item) -> the module that defines an item the module
    re-exports with `pub use` (followed through chains of re-exports)."""
    out = {}
    for m, text in texts.items():
        for path, group, single in REEXPORT_RE.findall(text):
            parts = path.split("::")
            if parts[0] in ("crate", "super", "self"):
                kind, parts = parts[0], tuple(parts[1:])
            else:
                kind, parts = "self", tuple(parts)
            if kind == "self":
                target = resolve(mods, m + parts)
            else:
                target = relative(mods, m, kind, parts)
            for name in items(group) if group else [single]:
                if target and target != m:
                    out[(m, name)] = target
    # Follow chains (a re-export of a re-export).
    for _ in range(8):
        changed = False
        for k, t in list(out.items()):
            deeper = out.get((t, k[1]))
            if deeper and deeper != t:
                out[k] = deeper
                changed = True
        if not changed:
            break
    return out


def graph(src):
    mods = modules(src)
    texts = {}
    for m, f in mods.items():
        text = open(f, encoding="utf-8").read()
        # Inline test modules may reach anywhere (a `#[cfg(test)] mod x;`
        # declaration is not one: what follows it still counts).
        texts[m] = TEST_MOD_RE.split(text)[0]
    again = reexports(mods, texts)
    edges = {m: set() for m in mods}

    def add(m, target):
        if target and target != m:
            edges[m].add(target)

    for m, text in texts.items():
        for kind, rest in PATH_RE.findall(text):
            add(m, relative(mods, m, kind, tuple(rest.split("::")[1:])))
        # A type named through a module that only re-exports it depends on
        # the module that defines it.
        for kind, rest, group, single in USE_ITEMS_RE.findall(text):
            base = relative(mods, m, kind, tuple(rest.split("::")[1:]) if rest else ())
            for name in items(group) if group else [single]:
                add(m, again.get((base, name)))
        if GLOB_SUPER_RE.search(text):
            add(m, m[:-1])
        # `use child::...` (a path relative to this module).
        for first, rest in USE_REL_RE.findall(text):
            if m + (first,) in mods:
                add(m, resolve(mods, m + (first,) + tuple(rest.split("::")[1:])))
    return edges


def one_module(comp):
    """Whether `comp` is one module and the files it is split into: one of
    its modules is the parent (or ancestor) of every other."""
    return any(all(c[: len(r)] == r for c in comp) for r in comp)


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1 and not one_module(comp):
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def cycles():
    found = []
    for crate in CRATES:
        for comp in sccs(graph(os.path.join(ROOT, crate))):
            names = sorted(crate + ":" + "::".join(m) for m in comp)
            found.append(names)
    return sorted(found)


def main():
    found = cycles()
    if "--write-baseline" in sys.argv:
        with open(BASELINE, "w") as f:
            for c in found:
                f.write(" ".join(c) + "\n")
        print(f"wrote {len(found)} cycles to {BASELINE}")
        return 0
    allowed = []
    if os.path.exists(BASELINE):
        allowed = [set(l.split()) for l in open(BASELINE) if l.strip()]
    bad = 0
    for c in found:
        if not any(set(c) <= a for a in allowed):
            print("new import cycle: " + " -> ".join(c))
            bad += 1
    for a in allowed:
        size = max((len(set(c) & a) for c in found), default=0)
        if size < len(a):
            print(f"a baseline cycle shrank ({len(a)} -> {size} modules): tighten the baseline with --write-baseline")
    print(f"import cycles: {len(found)} ({sum(len(c) for c in found)} modules), {bad} new")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
