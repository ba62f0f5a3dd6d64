#!/usr/bin/env python3
"""Independent PyTorch reference for the trainer's loss and gradients.

Written from the papers' equations, not from mixtral.cpp's code:
  Mixtral of Experts (Jiang et al. 2024) §2.1:  y = Σ_{i ∈ top-k(x·W_g)} softmax(top-k(x·W_g))_i · SwiGLU_i(x)
  SwiGLU (Shazeer 2020):                        SwiGLU(x) = W2 · (silu(W1·x) ⊙ W3·x)
  RMSNorm (Zhang & Sennrich 2019):              x / sqrt(mean(x²) + eps) ⊙ g
  RoPE (Su et al. 2021), Hugging Face layout:   x·cos + rotate_half(x)·sin, pairs (i, i + d/2)
  Grouped-query attention (Ainslie et al. 2023), causal softmax(q·kᵀ/√d)·v
  Switch Transformer load balancing (Fedus et al. 2021, eq. 4): α·N·Σ_i f_i·P_i, here f_i is the
      fraction of the T·k routed (token, choice) slots that went to expert i, averaged over layers
  ST-MoE router z-loss (Zoph et al. 2022, eq. 5): β·mean_t (logsumexp z_t)², averaged over layers
Everything runs in float64 with autograd.

Usage: reference.py DIR
  DIR/manifest.json  {"config": {...}, "batch": B, "seq": S, "tensors": [{"name", "shape"}, ...]}
  DIR/params.f32     the tensors, float32 little-endian, concatenated in manifest order
  DIR/tokens.i32, DIR/targets.i32   int32 [B][S]
Writes DIR/loss.json {"ce", "aux", "z"} and DIR/grads.f64 (float64, manifest order).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def rms_norm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope(x, theta):
    """x: [B, H, S, d]; position = index along S."""
    S, d = x.shape[-2], x.shape[-1]
    # the frequencies as float32 (as HF computes inv_freq), the angles in float64
    inv_freq = torch.tensor([float(np.float32(theta ** (-2.0 * i / d))) for i in range(d // 2)], dtype=torch.float64)
    ang = torch.arange(S, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(x, p, c):
    B, S, _ = x.shape
    H, KV, hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
    q = (x @ p["q_proj"].T).view(B, S, H, hd).transpose(1, 2)
    k = (x @ p["k_proj"].T).view(B, S, KV, hd).transpose(1, 2)
    v = (x @ p["v_proj"].T).view(B, S, KV, hd).transpose(1, 2)
    q, k = rope(q, c["rope_theta"]), rope(k, c["rope_theta"])
    k = k.repeat_interleave(H // KV, dim=1)  # query head h reads key/value head h // (H/KV)
    v = v.repeat_interleave(H // KV, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    s = s.masked_fill(~causal, float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, S, H * hd)
    return o @ p["o_proj"].T


def swiglu(x, w1, w2, w3):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def moe(x, p, c):
    """Returns (output, aux loss, z loss) for one layer; x: [N, D]."""
    E, k = c["n_experts"], c["top_k"]
    logits = x @ p["gate"].T                                  # [N, E]
    top_v, top_i = torch.topk(logits, k, dim=-1)              # [N, k]
    w = top_v.softmax(-1)                                     # softmax over the k chosen
    y = torch.zeros_like(x)
    for e in range(E):
        tok, rank = torch.where(top_i == e)
        if tok.numel():
            y = y.index_add(0, tok, w[tok, rank, None] * swiglu(x[tok], *p["experts"][e]))
    N = x.shape[0]
    f = F.one_hot(top_i, E).to(x.dtype).sum(dim=(0, 1)) / (N * k)  # fraction of slots per expert
    P = logits.softmax(-1).mean(0)                                  # mean router probability
    aux = E * (f * P).sum()
    z = torch.logsumexp(logits, -1).pow(2).mean()
    return y, aux, z


def main():
    d = sys.argv[1]
    man = json.load(open(os.path.join(d, "manifest.json")))
    c, B, S = man["config"], man["batch"], man["seq"]
    raw = np.fromfile(os.path.join(d, "params.f32"), dtype="<f4")
    tensors, off = {}, 0
    for t in man["tensors"]:
        n = int(np.prod(t["shape"]))
        tensors[t["name"]] = torch.tensor(raw[off:off + n].astype(np.float64).reshape(t["shape"]), requires_grad=True)
        off += n
    assert off == raw.size, "params.f32 does not match the manifest"
    tokens = torch.tensor(np.fromfile(os.path.join(d, "tokens.i32"), dtype="<i4").reshape(B, S), dtype=torch.long)
    targets = torch.tensor(np.fromfile(os.path.join(d, "targets.i32"), dtype="<i4").reshape(B, S), dtype=torch.long)

    T = tensors
    L = c["n_layers"]
    x = T["model.embed_tokens.weight"][tokens]                # [B, S, D]
    aux_total = torch.zeros((), dtype=torch.float64)
    z_total = torch.zeros((), dtype=torch.float64)
    for l in range(L):
        pre = f"model.layers.{l}."
        att = {n: T[pre + "self_attn." + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
        h = x + attention(rms_norm(x, T[pre + "input_layernorm.weight"], c["eps"]), att, c)
        m = rms_norm(h, T[pre + "post_attention_layernorm.weight"], c["eps"]).reshape(B * S, -1)
        if c["n_experts"] == 0:                               # dense: one SwiGLU MLP
            y = swiglu(m, T[pre + "mlp.gate_proj.weight"], T[pre + "mlp.down_proj.weight"], T[pre + "mlp.up_proj.weight"])
        else:
            q = pre + "block_sparse_moe."
            p = {"gate": T[q + "gate.weight"],
                 "experts": [(T[f"{q}experts.{e}.w1.weight"], T[f"{q}experts.{e}.w2.weight"], T[f"{q}experts.{e}.w3.weight"])
                             for e in range(c["n_experts"])]}
            y, aux, z = moe(m, p, c)
            aux_total = aux_total + c["aux_coef"] * aux / L
            z_total = z_total + c["z_coef"] * z / L
        x = h + y.reshape(B, S, -1)
    head = T["model.embed_tokens.weight"] if c["tie"] else T["lm_head.weight"]
    logits = rms_norm(x, T["model.norm.weight"], c["eps"]) @ head.T
    ce = F.cross_entropy(logits.reshape(B * S, -1), targets.reshape(-1))
    (ce + aux_total + z_total).backward()

    json.dump({"ce": ce.item(), "aux": aux_total.item(), "z": z_total.item()}, open(os.path.join(d, "loss.json"), "w"))
    grads = [T[t["name"]].grad.reshape(-1).numpy() for t in man["tensors"]]
    np.concatenate(grads).astype("<f8").tofile(os.path.join(d, "grads.f64"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
