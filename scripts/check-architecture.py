#!/usr/bin/env python3
"""Check the shape of the crate that ARCHITECTURE.md promises:

- no import cycle between modules (a module's references to its ancestors and
  descendants are containment, not dependencies; every other `crate::` or
  `super::` path is an edge to the module it names);
- no source file over 600 lines (tests included) unless listed in BIG_FILES
  with the reason;
- no function over 80 lines unless the line just above it (or above its
  attributes) is a comment starting with `// Long:` that says why.

Exits 1 and lists every breach. Reads the sources only; runs nothing.
"""

import re
import sys
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FN_LINES = 80
# file -> why it may be longer
BIG_FILES: dict = {}

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def module_of(path: Path) -> tuple:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    """Blank out comments and the contents of string and char literals."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            j = text.find('"' + hashes, i + len(hashes) + 2)
            out.append('""')
            i = n if j < 0 else j + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            out.append("' '")
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(body: str) -> list:
    """Expand `a::{b, c::{d, e}}` into ['a::b', 'a::c::d', 'a::c::e']."""
    body = re.sub(r"\s+", "", body)
    m = re.match(r"^(.*?)\{(.*)\}$", body)
    if not m:
        return [body]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    if cur:
        items.append(cur)
    out = []
    for item in items:
        for tail in expand_use(item):
            out.append(prefix + tail)
    return out


def references(text: str) -> list:
    refs = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]+);", text):
        refs.extend(expand_use(m.group(1)))
    for m in re.finditer(r"(?<![:\w])((?:crate|super)(?:::\w+)+)", text):
        refs.append(m.group(1))
    return refs


def resolve(mod: tuple, ref: str, modules: set):
    parts = [p for p in ref.split("::") if p not in ("self",)]
    if not parts:
        return None
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        base = mod
        rest = parts
        while rest and rest[0] == "super":
            base = base[:-1]
            rest = rest[1:]
    target = base
    for p in rest:
        if target + (p,) in modules:
            target = target + (p,)
        else:
            break
    return target


def main() -> int:
    problems = []
    files = sorted(SRC.rglob("*.rs"))
    modules = {module_of(f) for f in files}
    edges = {}
    for f in files:
        mod = module_of(f)
        text = f.read_text()
        lines = text.splitlines()
        rel = str(f.relative_to(ROOT))
        if len(lines) > MAX_FILE_LINES and rel not in BIG_FILES:
            problems.append(f"{rel}: {len(lines)} lines (over {MAX_FILE_LINES}; split it or list it in BIG_FILES with the reason)")
        for ref in references(strip_comments(text)):
            target = resolve(mod, ref, modules)
            if target is None or target == mod:
                continue
            if target[: len(mod)] == mod or mod[: len(target)] == target:
                continue  # parent and child: containment
            edges.setdefault(mod, set()).add(target)
        problems.extend(long_functions(rel, lines))
    problems.extend(cycles(edges))
    for p in problems:
        print(f"check-architecture: {p}", file=sys.stderr)
    if not problems:
        print(f"check-architecture: {len(files)} files, {sum(len(v) for v in edges.values())} module edges, no cycle, "
              f"no file over {MAX_FILE_LINES} lines, no function over {MAX_FN_LINES} lines without a reason")
    return 1 if problems else 0


def long_functions(rel: str, lines: list) -> list:
    out = []
    fn_re = re.compile(r"^(\s*)(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?(?:const\s+)?(?:unsafe\s+)?fn\s+(\w+)")
    for i, line in enumerate(lines):
        m = fn_re.match(line)
        if not m:
            continue
        indent = m.group(1)
        # The body ends at the first later line that closes at the same indent.
        end = None
        for j in range(i + 1, len(lines)):
            if lines[j].startswith(indent + "}") and not lines[j].startswith(indent + "} else"):
                end = j
                break
            if lines[j].rstrip().endswith(";") and j == i and "{" not in line:
                break
        if end is None or line.rstrip().endswith(";"):
            continue
        length = end - i + 1
        if length <= MAX_FN_LINES:
            continue
        k = i - 1
        while k >= 0 and lines[k].strip().startswith(("#[", "///")):
            k -= 1
        if k >= 0 and lines[k].strip().startswith("// Long:"):
            continue
        out.append(f"{rel}:{i + 1}: fn {m.group(2)} is {length} lines (over {MAX_FN_LINES}; split it, or say why in a `// Long:` comment above it)")
    return out


def cycles(edges: dict) -> list:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

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
                names = sorted("::".join(c) or "crate" for c in comp)
                detail = "; ".join(
                    f"{'::'.join(a)} -> {'::'.join(b)}" for a in comp for b in sorted(edges.get(a, ())) if b in comp
                )
                out.append(f"import cycle between {', '.join(names)} ({detail})")

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
