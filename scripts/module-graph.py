#!/usr/bin/env python3
"""Draws caid's module graph from Package.swift, and checks it.

    scripts/module-graph.py           prints the graph, a line per module: its tier and what it depends on
    scripts/module-graph.py --check   also fails (exit 1) when an arrow does not point to a lower tier, when a
                                      module's imports are not its declared dependencies, or when
                                      docs/architecture.md does not hold the graph as printed

The tiers are the architecture (docs/architecture.md, "Modules"): a module may depend only on modules of lower tiers.
"""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. Within a tier, modules do not depend on each other.
TIERS = [
    ("C shims", ["CBoringAEAD", "CCRC64", "CFuse3", "CGNU", "CLibFuzzer", "CNVML", "CSystemd", "CTDXGuest"]),
    ("foundation", ["CaidBase"]),
    ("service runtime", ["CaidCore"]),
    ("formats and evidence", ["Attestation", "Gocryptfs"]),
    ("protocols", ["KBSProtocol", "OSSProtocol", "RATLS"]),
    ("clients and adapters", ["AttestationService", "CaidNIO", "CaidControl", "CaidSystemd", "CacheFS", "KeyBroker", "ObjectStore"]),
    ("network services", ["Gateway", "Sharing"]),
    ("daemon", ["CaidConfiguration"]),
    ("executable", ["caid"]),
]
# Test and fuzz scaffolding: may use anything below the daemon's executable; nothing in the product uses them.
SCAFFOLDING = {"CaidFuzzTargets": 8, "caid-fuzz": 9, "CaidTestSupport": 7}


def tier_of(name):
    for index, (_, names) in enumerate(TIERS):
        if name in names:
            return index
    return SCAFFOLDING.get(name)


def targets():
    """(name, kind, local dependencies) for every target Package.swift declares, in its order."""
    text = open(os.path.join(ROOT, "Package.swift")).read()
    local = set(os.listdir(os.path.join(ROOT, "Sources")))
    out = []
    # One piece per declaration, from its `.kind(` to the next one, so that no declaration's text runs into another's.
    starts = list(re.finditer(r"\.(systemLibrary|target|executableTarget|testTarget)\(\s*name: \"([^\"]+)\"", text))
    for index, match in enumerate(starts):
        kind, name = match.group(1), match.group(2)
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        rest = text[match.end():end]
        deps_match = re.search(r"dependencies: \[(.*?)\]\s*,", rest, re.S)
        deps = deps_match.group(1) if deps_match else ""
        deps = re.sub(r"\.product\([^)]*\)", "", deps)
        out.append((name, kind, [d for d in re.findall(r'"([^"]+)"', deps) if d in local]))
    return out


def imports(directory):
    found = set()
    for path in glob.glob(os.path.join(ROOT, directory, "**", "*.swift"), recursive=True):
        found |= set(re.findall(r"^(?:@testable )?import (\w+)$", open(path).read(), re.M))
    return found


def graph_lines():
    lines = []
    for name, kind, deps in targets():
        if kind in ("systemLibrary", "testTarget"):
            continue
        tier = tier_of(name)
        label = TIERS[tier][0] if name not in SCAFFOLDING else "scaffolding"
        arrows = ", ".join(sorted(deps, key=lambda d: (-(tier_of(d) or 0), d))) or "-"
        lines.append(f"{name} ({label}) -> {arrows}")
    return lines


def check():
    problems = []
    local = set(os.listdir(os.path.join(ROOT, "Sources")))
    for name, kind, deps in targets():
        if kind == "systemLibrary":
            continue
        directory = ("Tests/" if kind == "testTarget" else "Sources/") + name
        used = imports(directory) & local - {name}
        undeclared = used - set(deps)
        unused = set(deps) - used - {"caid", "CLibFuzzer"}
        if undeclared:
            problems.append(f"{name} imports {', '.join(sorted(undeclared))} without declaring it in Package.swift")
        if unused and kind != "testTarget":
            problems.append(f"{name} declares {', '.join(sorted(unused))} in Package.swift and does not import it")
        if kind == "testTarget":
            continue
        tier = tier_of(name)
        if tier is None:
            problems.append(f"{name} has no tier in scripts/module-graph.py")
            continue
        for dep in deps:
            below = tier_of(dep)
            if below is None or below >= tier:
                problems.append(f"{name} ({tier}) -> {dep} ({below}) does not point down")
    doc = open(os.path.join(ROOT, "docs/architecture.md")).read()
    block = "\n".join(graph_lines())
    if block not in doc:
        problems.append("docs/architecture.md does not hold the module graph as scripts/module-graph.py prints it")
    return problems


if __name__ == "__main__":
    print("\n".join(graph_lines()))
    if "--check" in sys.argv:
        problems = check()
        for problem in problems:
            print("module-graph: " + problem, file=sys.stderr)
        sys.exit(1 if problems else 0)
