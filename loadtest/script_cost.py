#!/usr/bin/env python3
"""Redis time of the claim script per claim, without the service.

    pip install redis
    python3 loadtest/script_cost.py [--rules [--leased]] [--batch 30] [--calls 400] [--buckets 4096] [--aof]
                                    [--callgrind] [--script | --ab]

Starts its own redis-server on a free loopback port (killed at the end),
loads hcache.lua + rules_core.lua + claim.lua as store::scripts does, and
sends `--calls` batches of `--batch` claims (a new phone and device each, as
loadtest/claim.lua sends them; with --rules, the three rules of
loadtest/limits-3rules.toml in the call's rule table). A warm-up of the same
size runs first. Prints EVALSHA's own time (INFO commandstats) divided by the
claims: the script's cost alone, with no HTTP, no network and no other
process on the Redis thread. `--buckets` is the number of quota buckets the
claims spread over (the service uses the next power of two of stock / 16,
at most 65,536). Every claim must be issued; the script checks it.

--callgrind runs redis-server under valgrind's callgrind (apt-get install
valgrind) and prints the instructions Redis executed per claim over the
measured batches instead (counters zeroed after the warm-up, dumped after
the last batch): a count, not a time, so it does not move with the load
on the machine. Use --calls 150 or more: a few % still moves with the
random identities (hash growth, Lua's incremental GC). LUA_DIR=<dir>
reads the scripts from another directory (an A/B of two versions).
--yardstick sends ../shared/yardstick's claim script instead, one claim a
call as the yardstick does (the reference: its count includes reading each
call and writing its reply, which a batch shares among its claims).
The claims go as the service sends them: FCALL of the claim library (the
three files wrapped as store::scripts::Library wraps them); --script sends
them as an EVALSHA of the three files instead (the form kept for a server
that refuses functions). --ab alternates the two forms batch by batch in
one run and prints each one's script time a claim (INFO commandstats): a
timing A/B that the machine's load moves alike for both. --ab-dir DIR does
the same for two versions of the scripts, this lua/ (or LUA_DIR) and DIR's,
both as functions, each call timed by the slow log. Both alternate A B B A:
Redis steps the Lua garbage collector after every 50th script call, which
A B would charge to one side (it showed as a 6-9 % gap between two copies
of one script). Instruction counts miss cache misses and the collector's
walks of live tables; these timings do not, but move by 2-3 % between
runs. Each claim sends its own clock and
deadline, as the service does (they were one a call, with no deadline,
before 2026-12-04 evening: --one-clock, for counts comparable with the
earlier ones, which are about 4 % lower for the same script).
REDIS_SERVER=<path> runs another redis-server (one built with symbols, to
read the dump by function); KEEP=<file> keeps the callgrind dump
(callgrind_annotate --inclusive=yes <file>).
"""
import argparse
import base64
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import redis

ROOT = os.environ.get("LUA_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "lua")
RULES = [  # loadtest/limits-3rules.toml, as the service sends it
    ("st:{r:0}:ip-burst:e:", ["r", "100000000", "60000", "1", "0", "0", "1", "31536000000", "0"]),
    ("st:{r:0}:device-farm:e:", ["d", "3", "86400000", "1", "0", "0", "1", "31536000000", "0"]),
    ("st:{r:0}:phone-rate:e:", ["r", "5", "60000", "1", "0", "0", "1", "31536000000", "0"]),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hex16():
    return os.urandom(8).hex()


def b64():
    return base64.urlsafe_b64encode(os.urandom(12)).decode().rstrip("=")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", action="store_true")
    ap.add_argument("--leased", action="store_true",
                    help="with --rules: claims carry device-farm and phone-rate only, as the "
                         "service sends them while ip-burst is served from a lease")
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--buckets", type=int, default=4096)
    ap.add_argument("--aof", action="store_true", help="appendonly yes, appendfsync everysec")
    ap.add_argument("--callgrind", action="store_true", help="count Redis's instructions")
    ap.add_argument("--yardstick", action="store_true", help="the yardstick's script instead")
    ap.add_argument("--script", action="store_true", help="EVALSHA instead of FCALL")
    ap.add_argument("--ab", action="store_true",
                    help="alternate FCALL and EVALSHA batches (A B B A); print both times")
    ap.add_argument("--one-clock", action="store_true",
                    help="one clock a call and no deadline, as before 2026-12-04 evening")
    ap.add_argument("--ab-dir", help="alternate FCALLs of this lua/ and of LUA_DIR's; print both")
    a = ap.parse_args()
    port, work = free_port(), tempfile.mkdtemp()
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.%p"] if a.callgrind else []
    server = subprocess.Popen(
        grind + [os.environ.get("REDIS_SERVER", "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes" if a.aof else "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if a.callgrind else None)
    try:
        r = redis.Redis(port=port)
        for _ in range(50 if not a.callgrind else 600):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        r.hset("st:{bench}:meta", mapping={
            "state": "active", "stock": 4_000_000_000, "issued": 0, "starts_ms": 0,
            "ends_ms": 0, "per_phone": 1, "per_device": 1, "per_ip": 0, "valid_ms": 0,
            "rollout": 100, "low_at": -1})
        text = "".join(open(os.path.join(ROOT, f)).read()
                       for f in ("hcache.lua", "rules_core.lua", "claim.lua"))
        sha = r.script_load(text)
        # store::scripts::Library's wrapper: the prelude set up on the first
        # call, then fresh per-call caches and the call's KEYS / ARGV.
        def library(root, name):
            prelude = "".join(open(os.path.join(root, f)).read() for f in ("hcache.lua", "rules_core.lua"))
            r.execute_command("FUNCTION", "LOAD", "REPLACE", (
                f"#!lua name=stampede_{name}\nlocal run\nlocal function setup()\nlocal KEYS, ARGV\n"
                + prelude
                + "return function(keys, args)\nKEYS, ARGV = keys, args\nhc_reset()\nrules_reset()\n"
                + open(os.path.join(root, "claim.lua")).read()
                + f"\nend\nend\nredis.register_function('{name}', function(keys, args)\n"
                + "  if not run then run = setup() end\n  return run(keys, args)\nend)\n"))

        library(ROOT, "claim_cost")
        if a.ab_dir:
            library(a.ab_dir, "claim_other")
        table = RULES if a.rules else []
        run, seq, ip = hex16(), [0], hex16()

        def claim(now):
            seq[0] += 1
            keys = [f"st:{{bench}}:q:p:{int.from_bytes(os.urandom(4), 'big') % a.buckets}",
                    f"st:{{bench}}:q:d:{int.from_bytes(os.urandom(4), 'big') % a.buckets}",
                    "st:{bench}:q:i:0", "st:{bench}:rid:0"]
            # ("-": the fingerprint a claim without a client key sends.)
            # Each claim its own clock and deadline, as the service sends
            # them (claims of a batch arrive over a millisecond or more).
            deadline = 0
            if not a.one_clock:
                now += seq[0] % a.batch
                deadline = int(time.time() * 1000) + 60_000 + seq[0] % a.batch
            # (Mode 's', a server request id: no fingerprint nor TTL.)
            args = [str(now), b64(), b64(), "ipipipipipipipip", "s", "5", "", str(deadline),
                    str(len(table)), f"{run}-{seq[0]}"]
            if table:
                # (A distinct rule's member only: rule 2, device-farm.)
                if a.leased:
                    args[8] = "2"
                    args += ["2", hex16(), hex16(), "3", hex16()]
                else:
                    args += ["1", ip, "2", hex16(), hex16(), "3", hex16()]
            return keys, args

        def yardstick(calls):
            src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                    "shared", "yardstick", "src", "main.rs")).read()
            body = src.split('const CLAIM: &str = r#"', 1)[1].split('"#;', 1)[0]
            ysha = r.script_load(body)
            r.set("{c}:stock", 4_000_000_000)
            for _ in range(calls * a.batch):
                phone, device = b64(), b64()
                out = r.evalsha(ysha, 6, "{c}:stock", f"{{c}}:p:{phone}", f"{{c}}:d:{device}",
                                "{c}:ip:127.0.0.1", "{c}:serial", "{c}:claims", 1, phone)
                if out[0] != 1:
                    sys.exit(f"not issued: {out}")

        def batches(calls):
            if a.yardstick:
                return yardstick(calls)
            for c in range(calls):
                now = int(time.time() * 1000)
                keys = ["st:{bench}:meta", "st:{bench}:cl", "st:{bench}:outbox",
                        "st:{bench}:stats"] + [p for p, _ in table]
                args = [str(a.batch), str(len(table))] + ["|".join(cs) for _, cs in table]
                ck, ca = [], []
                for _ in range(a.batch):
                    k, v = claim(now)
                    ck += k
                    ca += v
                # (A B B A: Redis steps the Lua GC after every 50th call,
                # which plain A B alternation would charge to A alone.)
                if a.ab_dir and c % 4 in (1, 2):
                    out = r.execute_command("FCALL", "claim_other", len(keys) + len(ck),
                                            *keys, *ck, *args, *ca)
                elif a.script or (a.ab and c % 4 in (1, 2)):
                    out = r.evalsha(sha, len(keys) + len(ck), *keys, *ck, *args, *ca)
                else:
                    out = r.execute_command("FCALL", "claim_cost", len(keys) + len(ck),
                                            *keys, *ck, *args, *ca)
                # A claim's answer ends ok serial ms exp replay: its fields joined
                # by '|' (an array before 2026-12-04, for an A/B with LUA_DIR).
                bad = [o for o in out if (o.split(b'|') if isinstance(o, bytes) else o)[-5] != b'ok']
                if bad:
                    sys.exit(f"not issued: {bad[:2]}")

        def usec():
            s = r.info("commandstats").get("cmdstat_evalsha" if a.script else "cmdstat_fcall", {})
            return s.get("usec", 0)

        what = (f"({('3 rules, ip-burst leased' if a.leased else '3 rules') if a.rules else 'no rules'}, batches of {a.batch}, "
                f"{a.buckets} quota buckets, AOF {'on' if a.aof else 'off'})")
        if a.yardstick:
            what = f"(the yardstick's script, one claim a call, AOF {'on' if a.aof else 'off'})"
        elif a.script:
            what = what[:-1] + ", EVALSHA)"
        batches(a.calls)  # warm-up: the buckets and rule hashes exist
        if a.callgrind:
            ctl = lambda flag: subprocess.run(["callgrind_control", flag, str(server.pid)],
                                              capture_output=True, check=True)
            ctl("-z")
            batches(a.calls)
            ctl("-d")
            dump = max(glob.glob(f"{work}/cg.{server.pid}.*"), key=os.path.getmtime)
            total = next(int(line.split()[1]) for line in open(dump)
                         if line.startswith(("summary:", "totals:")))
            if os.environ.get("KEEP"):
                shutil.copy(dump, os.environ["KEEP"])
            print(f"{total / (a.calls * a.batch):,.0f} Redis instructions a claim {what}")
            return
        if a.ab_dir:
            # Each function's own time: Redis keeps none per function, but
            # the slow log (every call logged) has each call's duration.
            r.config_set("slowlog-max-len", 100 * a.calls)
            r.config_set("slowlog-log-slower-than", 0)
            r.slowlog_reset()
            batches(a.calls)
            r.config_set("slowlog-log-slower-than", 10000)
            took = {}
            n = r.execute_command("SLOWLOG", "LEN")
            for e in r.execute_command("SLOWLOG", "GET", n):
                args = e[3]
                if len(args) > 1 and args[0].upper() == b"FCALL":
                    took.setdefault(args[1].decode(), []).append(e[2])
            for name, label in (("claim_cost", ROOT), ("claim_other", a.ab_dir)):
                t = took.get(name, [])
                print(f"{label}: {sum(t) / (len(t) * a.batch):.2f} us a claim over {len(t)} calls {what}")
            return
        if a.ab:
            stats = lambda: r.info("commandstats")
            s0 = stats()
            batches(a.calls)
            s1 = stats()
            for cmd in ("fcall", "evalsha"):
                u = s1[f"cmdstat_{cmd}"]["usec"] - s0.get(f"cmdstat_{cmd}", {}).get("usec", 0)
                print(f"{cmd}: {u / (a.calls * a.batch / 2):.2f} us of script a claim {what}")
            return
        u0 = usec()
        batches(a.calls)
        per = (usec() - u0) / (a.calls * a.batch)
        print(f"{per:.2f} us of script a claim {what}")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
