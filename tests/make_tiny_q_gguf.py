#!/usr/bin/python3
"""Writes tiny-q-f32.gguf (../shared/fixtures/QUANTS.md section 1) byte for byte, numpy only.

llama.cpp's converter made that file from gen_mixtral.py's `presets/tiny-q.json` checkpoint; its
header is not in the shared header store. It differs from tiny-f32's stored header only where the
shape does: general.name ("Tiny Q", from the directory name), general.size_label (gguf-py's
size_label: one expert's share plus the shared weights, 17.6M -> "8x18M"), the llama.* sizes and the
tensor extents/offsets. Tensor order, KV order and the tokenizer are the converter's, as in tiny-f32.
The tensor data then comes from make_gguf.build (the converter's transform of the HF tensors).

Usage: make_tiny_q_gguf.py SHARED_FIXTURES HF_DIR OUT.gguf    (exit 1 when the sha256 differs)
"""
import json
import math
import os
import struct
import sys

SHA256 = "572657f8a13ede68ff3fe794802d0924cbef7355f103e26ddc26baa47b72a397"
GGUF_STRING, GGUF_ARRAY = 8, 9
SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def skip_value(buf, p, t):
    if t == GGUF_STRING:
        return p + 8 + struct.unpack_from("<Q", buf, p)[0]
    if t == GGUF_ARRAY:
        et, n = struct.unpack_from("<IQ", buf, p)
        p += 12
        for _ in range(n if et == GGUF_STRING else 0):
            p = skip_value(buf, p, et)
        return p if et == GGUF_STRING else p + n * SCALAR_SIZE[et]
    return p + SCALAR_SIZE[t]


def read_string(buf, p):
    n = struct.unpack_from("<Q", buf, p)[0]
    return buf[p + 8:p + 8 + n].decode(), p + 8 + n


def split_header(buf):
    """-> (n_tensors, [(key, type, raw value bytes)], [(name, ne, type)])"""
    _, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    p = 24
    kvs = []
    for _ in range(n_kv):
        key, p = read_string(buf, p)
        t = struct.unpack_from("<I", buf, p)[0]
        end = skip_value(buf, p + 4, t)
        kvs.append((key, t, buf[p + 4:end]))
        p = end
    tensors = []
    for _ in range(n_tensors):
        name, p = read_string(buf, p)
        nd = struct.unpack_from("<I", buf, p)[0]
        ne = list(struct.unpack_from(f"<{nd}Q", buf, p + 4))
        t = struct.unpack_from("<I", buf, p + 4 + 8 * nd)[0]
        p += 4 + 8 * nd + 12
        tensors.append((name, ne, t))
    return kvs, tensors


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def tiny_q_shapes(c):
    h, f, e = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    return {"token_embd": [h, 32000], "output": [h, 32000], "attn_norm": [h], "ffn_norm": [h],
            "output_norm": [h], "attn_q": [h, h], "attn_k": [h, kv], "attn_v": [h, kv],
            "attn_output": [h, h], "ffn_gate_inp": [h, e], "ffn_gate_exps": [h, f, e],
            "ffn_up_exps": [h, f, e], "ffn_down_exps": [f, h, e]}


def size_label(c, shapes):
    n = math.prod
    total = sum(n(shapes[k]) for k in ("token_embd", "output", "output_norm"))
    per_layer = sum(n(shapes[k]) for k in shapes if k not in ("token_embd", "output", "output_norm"))
    total += c["num_hidden_layers"] * per_layer
    experts = c["num_hidden_layers"] * sum(n(shapes[k]) for k in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"))
    e = c["num_local_experts"]
    one = total - experts + experts // e
    assert 1e6 < one < 1e9
    scaled = one * 1e-6
    fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{e}x{scaled:.{fix}f}M"


def tiny_q_header(template, c, name):
    kvs, tensors = split_header(template)
    shapes = tiny_q_shapes(c)
    u32 = lambda v: struct.pack("<I", v)
    new = {"general.name": gguf_string(name), "general.size_label": gguf_string(size_label(c, shapes)),
           "llama.embedding_length": u32(c["hidden_size"]),
           "llama.feed_forward_length": u32(c["intermediate_size"]),
           "llama.attention.head_count": u32(c["num_attention_heads"]),
           "llama.attention.head_count_kv": u32(c["num_key_value_heads"]),
           "llama.block_count": u32(c["num_hidden_layers"]),
           "llama.expert_count": u32(c["num_local_experts"]),
           "llama.expert_used_count": u32(c["num_experts_per_tok"]),
           "llama.rope.dimension_count": u32(c["hidden_size"] // c["num_attention_heads"])}
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    for key, t, raw in kvs:
        if key in new and t == 4 and len(raw) != 4:
            raise SystemExit(f"{key}: unexpected type")
        out += gguf_string(key) + u32(t) + new.get(key, raw)
    offset, align = 0, 32
    for tname, _, t in tensors:
        if t != 0:
            raise SystemExit("template is not an F32 file")
        ne = shapes[tname.split(".")[-2]]
        out += gguf_string(tname) + u32(len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + u32(t)
        out += struct.pack("<Q", offset)
        size = 4 * math.prod(ne)
        offset += (size + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    return bytes(out)


def main():
    fixtures, hf_dir, out_path = sys.argv[1:4]
    sys.dont_write_bytecode = True  # (no __pycache__ inside ../shared)
    sys.path.insert(0, fixtures)
    import make_gguf
    config = json.load(open(os.path.join(fixtures, "presets", "tiny-q.json")))
    template = make_gguf.load_header(os.path.join(fixtures, "gguf-headers", "headers.tar.xz"), "tiny-f32")
    header = tiny_q_header(template, config, "Tiny Q")
    tmp = out_path + ".tmp"
    digest = make_gguf.build(hf_dir, header, tmp)
    ok = digest == SHA256
    print(f"{digest}  {out_path}  {'OK' if ok else 'MISMATCH'}")
    if not ok:
        return 1
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
