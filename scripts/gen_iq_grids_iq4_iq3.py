#!/usr/bin/env python3
"""Writes the constant tables of src/quant/iq_grids_iq4_iq3.cpp from llama.cpp's sources.

  scripts/gen_iq_grids_iq4_iq3.py LLAMA_CPP_DIR [--check]

Reads iq3xxs_grid / iq3s_grid from ggml/src/ggml-common.h and kvalues_iq4nl from
ggml/src/ggml-quants.c, and replaces the text between the GENERATED markers of the .cpp (with
--check: only compares). Also checks that the quantizer's packed grids (kgrid_256 / kgrid_512 in
ggml-quants.c, 3 bits per coordinate) are these grids with each byte mapped to its level, so the
quantizer may derive them instead of carrying a second copy.
"""
import pathlib, re, sys

def table(text, name):
    m = re.search(r"GGML_TABLE_BEGIN\(\w+, " + name + r", \d+\)(.*?)GGML_TABLE_END", text, re.S)
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|-?\d+", m.group(1))]

def static_array(text, name):
    m = re.search(name + r"\[\d+\]\s*=\s*\{(.*?)\}", text, re.S)
    return [int(v, 0) for v in re.findall(r"-?\d+", m.group(1))]

def main():
    root = pathlib.Path(sys.argv[1])
    common = (root / "ggml/src/ggml-common.h").read_text()
    quants = (root / "ggml/src/ggml-quants.c").read_text()
    xxs, s = table(common, "iq3xxs_grid"), table(common, "iq3s_grid")
    kv = static_array(quants, "kvalues_iq4nl")
    assert len(xxs) == 256 and len(s) == 512 and len(kv) == 16

    def packed(grid, level):
        return [sum(level((g >> 8 * i) & 0xFF) << 3 * i for i in range(4)) for g in grid]
    assert packed(xxs, lambda b: b // 8) == static_array(quants, "kgrid_256")
    assert packed(s, lambda b: (b - 1) // 2) == static_array(quants, "kgrid_512")

    def rows(vals, fmt, per):
        return "\n".join("    " + " ".join(fmt(v) + "," for v in vals[i:i + per])
                         for i in range(0, len(vals), per))
    out = ("const int8_t kvalues_iq4nl[16] = {\n" + rows(kv, str, 16) + "\n};\n\n"
           "const uint32_t iq3xxs_grid[256] = {\n" + rows(xxs, lambda v: "0x%08x" % v, 8) + "\n};\n\n"
           "const uint32_t iq3s_grid[512] = {\n" + rows(s, lambda v: "0x%08x" % v, 8) + "\n};\n")

    cpp = pathlib.Path(__file__).resolve().parent.parent / "src/quant/iq_grids_iq4_iq3.cpp"
    src = cpp.read_text()
    begin, end = "// BEGIN GENERATED (scripts/gen_iq_grids_iq4_iq3.py)\n", "// END GENERATED\n"
    a, b = src.index(begin) + len(begin), src.index(end)
    if "--check" in sys.argv:
        sys.exit(0 if src[a:b] == out else "tables differ from " + str(root))
    cpp.write_text(src[:a] + out + src[b:])

main()
