#!/usr/bin/env python3
"""Regenerate the seed corpora from the repository's real inputs.

Run from the repository root: python3 fuzz/make_seeds.py
(console logs are read from target/xenmem-logs/ if present; the committed
decode seeds came from a boot of HEAD's scenarios).
"""
import base64, glob, os, re, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


data = os.path.join(ROOT, "xenmem", "tests", "data")

# fdt: Xen's trees as they are (mode byte = the magic's 0xd0, even).
for p in sorted(glob.glob(os.path.join(data, "*.dtb"))):
    put("fdt", os.path.basename(p), open(p, "rb").read())
# ... and one generated-tree input (odd first byte).
put("fdt", "generated-1", bytes([1]) + bytes(range(1, 200)))

# memmap: the PVH dom0 e820, as e820 and as start-info, both gap policies
# and limits; a compact map whose entries split pages.
e820 = open(os.path.join(data, "xen-4.17-x86-pvh-dom0.e820"), "rb").read()
for flags in (0x00, 0x01, 0x02, 0x04, 0x08):
    put("memmap", "pvh-dom0-%02x" % flags, bytes([flags]) + e820)
compact = b"".join(struct.pack("<HHB", a, s, k) for a, s, k in
                   [(0, 0x9f0, 1), (0x9f0, 0x10, 2), (0xf0, 0x10, 2), (0x100, 0xff00 - 0x100, 1),
                    (0xfff8, 0x8, 3), (0x10, 0x8, 1), (0x18, 0x8, 1)])
put("memmap", "compact-split", bytes([0x80]) + compact)

# cmdline: the agent's option lines from the scenarios (xtask/src/scenarios.rs,
# xl_scenarios.rs, stub.rs), one per scenario.
seen = set()
for src in ("scenarios.rs", "xl_scenarios.rs"):
    text = open(os.path.join(ROOT, "xtask", "src", src)).read()
    for m in re.finditer(r"agent_opts:\s*&\[(.*?)\]", text, re.S):
        words = re.findall(r'"([^"]*)"', m.group(1))
        line = " ".join(words)
        if line and line not in seen:
            seen.add(line)
for i, line in enumerate(sorted(seen)):
    put("cmdline", "scenario-%02d" % i, line.encode())
put("cmdline", "arm-domu", b"domid=1 exit=shutdown peer=0x0 grant-xchg=8")

# region and reservation: op-sequence inputs have no real form; a few byte
# strings to start from.
for i, seed in enumerate([bytes(range(256)), bytes([0x55] * 96), bytes(range(255, -1, -3)) * 2]):
    put("region", "ops-%d" % i, seed)
    put("reservation", "ops-%d" % i, seed)

# decode: Xen's console lines from recorded boots, and the agent's messages
# of those boots framed as the agent frames them (rzCOBS, then `@xm:` base64
# lines of 48 bytes), with table entry 10 (`{=str}`), d0 and d1.
def rzcobs(data):
    out = bytearray([0])
    run = zeros = 0
    for b in data:
        if run < 7:
            if b == 0:
                zeros |= 1 << run
            else:
                out.append(b)
            run += 1
            if run == 7 and zeros != 0:
                out.append(zeros); run = 0; zeros = 0
        elif b == 0:
            out.append((run - 7) | 0x80); run = 0; zeros = 0
        else:
            out.append(b); run += 1
            if run == 134:
                out.append(0xff); run = 0; zeros = 0
    if 1 <= run <= 6:
        out.append((zeros | (0xff << run)) & 0x7f)
    elif run >= 7:
        out.append((run - 7) | 0x80)
    out.append(0)
    return bytes(out)


def framed(msg, prefix):
    raw = struct.pack("<H", 10) + struct.pack("<I", len(msg)) + msg
    enc = rzcobs(raw)
    return [prefix + "@xm:" + base64.b64encode(enc[i:i + 48]).decode() for i in range(0, len(enc), 48)]


logs = sorted(glob.glob(os.path.join(ROOT, "target", "xenmem-logs", "test-*.log")))
for p in logs[:6]:
    name = os.path.basename(p)[5:-4]
    lines = open(p, "rb").read().decode("utf-8", "replace").splitlines()
    xen = [l for l in lines if l.startswith("(XEN)")][:40]
    out = list(xen)
    for l in lines:
        m = re.match(r"\[d(\d+)\] \w+\s+(.*)", l)
        if m and len(out) < 90:
            d = int(m.group(1))
            prefix = "" if d == 0 else "(XEN) [0000000012345678] (d%d) " % d
            out.extend(framed(m.group(2).encode(), prefix))
    put("decode", name, ("\r\n".join(out) + "\r\n").encode())
