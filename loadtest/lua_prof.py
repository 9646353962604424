#!/usr/bin/env python3
"""Reads a LUA_PROF dump back onto the claim library's Lua lines.

A line profile of the claim script, for finding where its Redis time goes:

    # once: a redis-server 7.0.15 with a bytecode counter (loadtest/lua_prof.patch)
    git clone --branch 7.0.15 --depth 1 https://github.com/redis/redis /tmp/redis-src
    (cd /tmp/redis-src && patch -p1 < /work/main/loadtest/lua_prof.patch && make -j2)
    # the claims, as script_cost.py sends them (the dump is rewritten as it runs)
    LUA_PROF=/tmp/lp.txt REDIS_SERVER=/tmp/redis-src/src/redis-server \\
        python3 loadtest/script_cost.py --rules --leased --batch 17 --calls 1500
    python3 loadtest/lua_prof.py /tmp/lp.txt --claims 51000 [--top 60] [--by-function]

The patched VM counts, for every bytecode it runs, the source line it
belongs to and the TSC cycles until the next bytecode starts (so a line's
cycles include the C it calls: redis.call, table and string work). The
counter itself costs about 40 cycles a bytecode, which weighs on lines of
many cheap bytecodes: use the cycles to rank lines, the bytecode counts
as exact. `--claims` is every claim the server ran (script_cost.py runs a
warm-up of the same size as the measured part: 2 x calls x batch).
The library's text is rebuilt here as script_cost.py sends it (a 4-line
header, hcache.lua, rules_core.lua, a 4-line wrapper, claim.lua), so the
line numbers map back to the files in lua/ (or LUA_DIR).
"""
import argparse
import collections
import os

ROOT = os.environ.get("LUA_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "lua")


def sections():
    """(file, first line in the library, the file's lines), in order."""
    out, line = [], 5  # after script_cost.py's 4-line header
    for name in ("hcache.lua", "rules_core.lua"):
        text = open(os.path.join(ROOT, name)).read()
        out.append((name, line, text.split("\n")))
        line += text.count("\n")
    line += 4  # the wrapper's lines
    out.append(("claim.lua", line, open(os.path.join(ROOT, "claim.lua")).read().split("\n")))
    return out


def locate(secs, n):
    for name, first, lines in reversed(secs):
        if n >= first:
            i = n - first
            return name, i + 1, lines[i] if i < len(lines) else ""
    return "header", n, ""


def function_of(lines, i):
    for j in range(min(i, len(lines)) - 1, -1, -1):
        if lines[j].startswith("local function "):
            return lines[j][len("local function "):].split("(")[0]
    return "(top level)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--claims", type=float, required=True, help="claims the server ran")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--by-function", action="store_true")
    a = ap.parse_args()
    rows = [tuple(map(int, line.split())) for line in open(a.dump) if line.strip()]
    secs = sections()
    lines_of = {name: lines for name, _, lines in secs}
    total_bc = sum(r[1] for r in rows) / a.claims
    total_cyc = sum(r[2] for r in rows) / a.claims
    print(f"{total_bc:,.0f} bytecodes and {total_cyc:,.0f} cycles a claim (counter included)")
    if a.by_function:
        bc, cyc = collections.Counter(), collections.Counter()
        for n, count, cycles in rows:
            name, i, _ = locate(secs, n)
            key = f"{name}:{function_of(lines_of.get(name, []), i)}"
            bc[key] += count
            cyc[key] += cycles
        for key, c in bc.most_common(a.top):
            print(f"{c / a.claims:8.1f} bc {100 * c / (total_bc * a.claims):5.1f}%  "
                  f"{cyc[key] / a.claims:8.0f} cyc  {key}")
        return
    for n, count, cycles in sorted(rows, key=lambda r: -r[2])[:a.top]:
        name, i, text = locate(secs, n)
        print(f"{cycles / a.claims:8.0f} cyc {100 * cycles / (total_cyc * a.claims):5.1f}% "
              f"{count / a.claims:7.2f} bc  {name}:{i:<4} {text.strip()[:90]}")


if __name__ == "__main__":
    main()
