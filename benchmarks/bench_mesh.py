"""Mesh extraction speed: dense vs coarse-to-fine grids, our SDF head vs a point-e-style one.

    .venv/bin/python benchmarks/bench_mesh.py [--grids 64 128] [--dense-grids 64 128] \
        [--pointe-grids 32 64] [--bf16 | --bf16-only] [--latents 256 512] [--threads 2]

All rows use an SDF head of point-e's shape (``sdf_pointe``: width 256, 8 encoder + 4 decoder
layers, 4096 input points, 9.48 M params) with random weights, one cloud of 4096 points. A random
network's zero level set is arbitrary, so every row meshes ``sphere(x) + 1e-3·net(x)``: the network
is evaluated at exactly the queries the mesher asks for (the cost), while the surface, and hence
the coarse-to-fine band, is that of a realistic closed shape (a sphere of radius 0.35).

Rows:
* ``ours``: SDPA attention, K/V of the latents cached once per cloud, batches of 32768 queries,
  dense or coarse-to-fine (stride 8 → 1); optionally bf16 autocast.
* ``point-e style``: point-e's decoder maths re-implemented as point-e runs it (einsum attention
  with fp32 softmax, c_kv of the 4096 latents recomputed for every batch, batches of 4096, dense
  grid). Point-e itself measured ≈73 s at grid 64 on this machine kind (reference/point-e.md §11).
* ``encoder``: one encode of 4096 points with full self-attention vs a perceiver (latents), and the
  per-query decoder cost that follows from the shorter K/V.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import torch

from pointdiff.config import get_preset
from pointdiff.meshing import marching_cubes
from pointdiff.models.sdf import SDFModel


def _cloud(n: int = 4096) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(n, 3, generator=g)
    return 0.35 * p / p.norm(dim=1, keepdim=True)


def _sphere(q: torch.Tensor) -> torch.Tensor:
    return q.norm(dim=-1) - 0.35


def _pointe_style_fn(model: SDFModel, tokens: torch.Tensor, batch: int = 4096):
    """Point-e's decoder path: einsum attention, fp32 softmax, K/V recomputed per batch."""

    def attend(block, x, data):
        heads = block.attn.heads
        q = block.attn.c_q(block.ln_1(x))
        kv = block.attn.c_kv(block.ln_2(data))  # recomputed for every query batch
        b, t, w = q.shape
        d = w // heads
        scale = 1 / math.sqrt(math.sqrt(d))
        q = q.view(b, t, heads, d)
        k, v = kv.view(b, -1, 2, heads, d).unbind(2)
        weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = torch.einsum("bhts,bshc->bthc", weight, v).reshape(b, t, w)
        return x + block.attn.c_proj(out)

    @torch.no_grad()
    def fn(queries: torch.Tensor) -> torch.Tensor:
        out = []
        for c in queries.split(batch):
            x = model.decoder_input_proj(c[None])
            for block in model.decoder.resblocks:
                x = attend(block, x, tokens)
                x = x + block.mlp(block.ln_3(x))
            out.append(model.output_proj(model.ln_post(x))[0, :, 0])
        return torch.cat(out)

    return fn


def _with_sphere(fn):
    return lambda q: _sphere(q) + 1e-3 * fn(q)


def _counting(fn):
    count = [0]

    def wrapped(q):
        count[0] += len(q)
        return fn(q)

    return wrapped, count


def _time(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[64, 128], help="coarse-to-fine")
    p.add_argument("--dense-grids", type=int, nargs="*", default=None, help="default: --grids")
    p.add_argument("--pointe-grids", type=int, nargs="*", default=[32])
    p.add_argument("--bf16", action="store_true", help="also time ours under bf16 autocast")
    p.add_argument("--bf16-only", action="store_true", help="time ours under bf16 autocast only")
    p.add_argument("--latents", type=int, nargs="*", default=[256, 512])
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    dense = set(args.grids if args.dense_grids is None else args.dense_grids)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = get_preset("sdf_pointe")
    model = SDFModel(cfg).eval()
    torch.nn.init.normal_(model.output_proj.weight, std=0.02)  # ours starts at zero: make it vary
    cloud = _cloud(cfg.num_points)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; sdf_pointe, random weights"
    )
    print("(total = encode + queries + marching cubes; both rows use our encoder, timed once)")
    head = (
        f"{'implementation':<32}{'grid':>6}{'queries':>12}{'mesh s':>9}{'total s':>9}{'faces':>9}"
    )
    print(head)
    for bf16 in [True] if args.bf16_only else [False, True] if args.bf16 else [False]:
        fn, t_enc = _time(lambda bf16=bf16: model.query_fn(cloud, batch_size=32768, bf16=bf16))
        name = "ours" + (" bf16" if bf16 else "")
        print(f"  (encode once: {t_enc:.2f} s)")
        for grid in sorted(dense | set(args.grids)):
            for stride, label in ((1, "dense"), (8, "coarse-to-fine")):
                if (stride == 1 and grid not in dense) or (stride > 1 and grid not in args.grids):
                    continue
                sdf_fn, count = _counting(_with_sphere(fn))
                mesh, t = _time(
                    lambda f=sdf_fn, g=grid, s=stride: marching_cubes(f, g, coarse_stride=s)
                )
                n = count[0]
                row = f"{name}, {label}"
                print(f"{row:<32}{grid:>6}{n:>12,}{t:>9.2f}{t + t_enc:>9.2f}{mesh.num_faces:>9,}")
    with torch.no_grad():
        t_enc = time.perf_counter()
        tokens = model.encode(cloud[None]).tokens
        t_enc = time.perf_counter() - t_enc
    check = torch.rand(512, 3) - 0.5  # the two implementations compute the same function
    ours = model.query_fn(cloud)(check)
    diff = (ours - _pointe_style_fn(model, tokens)(check)).abs().max().item()
    print(f"  (max |ours - point-e style| on 512 queries: {diff:.1e}; output std {ours.std():.2f})")
    for grid in args.pointe_grids:
        fn = _with_sphere(_pointe_style_fn(model, tokens))
        mesh, t = _time(lambda f=fn, g=grid: marching_cubes(f, g, coarse_stride=1, batch_size=4096))
        row = "point-e style, dense"
        print(f"{row:<32}{grid:>6}{grid**3:>12,}{t:>9.2f}{t + t_enc:>9.2f}{mesh.num_faces:>9,}")

    # Encoder: full self-attention over the points vs a perceiver, and the decoder cost after it.
    print(f"\n{'encoder':<32}{'K/V len':>8}{'encode s':>10}{'decode s / 32k queries':>24}")
    q = torch.rand(1, 32768, 3) - 0.5
    for latents in [0, *args.latents]:
        m = SDFModel(dataclasses.replace(cfg, num_latents=latents)).eval()
        with torch.no_grad():
            m.encode(cloud[None])  # warm-up
            enc, t_enc = _time(lambda m=m: m.encode(cloud[None]))
            _, t_dec = _time(lambda m=m, enc=enc: m.predict_sdf(enc, q))
        name = "self-attention (point-e)" if latents == 0 else f"perceiver, {latents} latents"
        print(f"{name:<32}{enc.tokens.shape[1]:>8}{t_enc:>10.2f}{t_dec:>24.2f}")


if __name__ == "__main__":
    main()
