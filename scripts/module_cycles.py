#!/usr/bin/env python3
"""No import cycles between the modules of a crate.

Usage: scripts/module_cycles.py CRATE_SRC_DIR...

Reads every `crate::…`, `super::…` and `self::…` path in each module file
(test modules at the end of a file and comments excluded), maps it to the module it names,
and prints every strongly connected component of more than one module with
its edges. Exits 1 when there is one, so that data flows one way (issue 14:
"the structure a newcomer can change").
"""
import os, re, sys
from collections import defaultdict

def modname(src, path):
    rel = os.path.relpath(path, src)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts) or "crate"

def strip_comments(text):
    # Line and doc comments name modules without importing them; a `//`
    # after a non-space (a URL in a string) is not a comment start.
    return re.sub(r"(^|\s)//.*$", r"\1", text, flags=re.M)

def strip_tests(text):
    # drop #[cfg(test)] mod tests { ... } at the end (heuristic: from the marker on)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text

def main(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[modname(src, p)] = strip_comments(strip_tests(open(p).read()))
    mods = set(files)
    def resolve(cur, path):
        segs = path.split("::")
        if segs[0] == "crate":
            base = []
            segs = segs[1:]
        elif segs[0] in ("super", "self"):
            base = [] if cur == "crate" else cur.split("::")
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        else:
            return None
        best = None
        for i in range(len(segs), 0, -1):
            cand = "::".join(base + segs[:i])
            if cand in mods:
                best = cand
                break
        return best
    edges = defaultdict(set)
    for m, text in files.items():
        for mt in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)(?:::\{([^}]*)\})?", text):
            path, group = mt.group(1), mt.group(2)
            targets = [path]
            if group:
                targets += [path + "::" + g.strip().split(" ")[0].split("::")[0] for g in group.split(",") if g.strip()]
            for t in targets:
                r = resolve(m, t)
                if r and r != m and not m.startswith(r + "::") and not r.startswith(m + "::"):
                    edges[m].add(r)
    # Tarjan
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            sccs.append(comp)
    for v in sorted(mods):
        if v not in index:
            strong(v)
    cyc = [sorted(c) for c in sccs if len(c) > 1]
    for c in cyc:
        print(f"cycle of {len(c)}: {', '.join(c)}")
        for a in c:
            print(f"  {a} -> {', '.join(sorted(b for b in edges[a] if b in c))}")
    if not cyc:
        print("no cycles")
    return 1 if cyc else 0

if len(sys.argv) < 2:
    sys.exit(__doc__)
status = 0
for src in sys.argv[1:]:
    print(f"{src}:", end=" ", flush=True)
    status |= main(src)
sys.exit(status)
