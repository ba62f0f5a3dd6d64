#!/usr/bin/env python3
"""Whether two GGUF files hold the same tensors (names, types, data bytes), whatever their metadata.

    gguf_same_tensors.py A.gguf B.gguf     prints "same" or "differ: N tensors (first names)"
"""
import hashlib
import struct
import sys

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def tensors(path):
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        (v,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v

    def string():
        nonlocal pos
        n = take("Q")
        pos += n
        return data[pos - n:pos].decode()

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(SCALARS[t])

    if data[:4] != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    pos = 4
    take("I")
    n_tensors, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        key = string()
        kv[key] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        infos.append((name, dims, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    ends = sorted(o for *_, o in infos)[1:] + [len(data) - start]
    end_of = dict(zip(sorted(o for *_, o in infos), ends))
    return {n: (d, t, hashlib.sha256(data[start + o:start + end_of[o]]).hexdigest()) for n, d, t, o in infos}


a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
diff = sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))
print("same" if not diff else f"differ: {len(diff)} tensors ({', '.join(diff[:3])})")
