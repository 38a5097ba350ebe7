"""Export training checkpoints as a shipped pipeline directory (fp16 EMA weights + configs).

    .venv/bin/python train/export_pipeline.py checkpoints/pointdiff-small \
        --base runs/ship/base --sdf runs/ship/sdf \
        [--upsampler runs/ship/up | --surface-upsampler 3072] \
        --sampler dpmpp_2m --steps 24 --guidance 3 --captions-from runs/data/ship --wordnet \
        [--base-points 1024 --up-points 1024 3072]   # models trained on point subsets

Each stage's config.json records the SHA-256 of its weight files ("sha256"); loading checks them,
so a corrupt or changed file is named instead of sampled from.

--wordnet also writes base/lexicon.json: every WordNet noun mapped to the nearest word of the
training captions (pointdiff.conditioning.lexicon), so prompts with words the model never saw
("a desk") are read as words it knows ("a table"). It needs Debian's wordnet-base
(`make sysdeps`) at export time only.
"""

import argparse

from pointdiff.conditioning.lexicon import LexiconError, WordNet, build_aliases, vocab_counts
from pointdiff.config import SampleConfig
from pointdiff.data import read_index
from pointdiff.release import export_pipeline

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--base", required=True, help="base run dir or ckpt dir")
    ap.add_argument("--upsampler", default=None)
    ap.add_argument("--sdf", default=None)
    # base stage sampler settings: None keeps SampleConfig's default
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--s-churn", type=float, default=0.0, help="(default 0: deterministic)")
    ap.add_argument(
        "--stray-ratio",
        type=float,
        default=None,
        help="base stage: relocate points beyond this × the median k-NN spacing (0: off)",
    )
    ap.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="base stage: guide only where LO < sigma <= HI (default: every sigma)",
    )
    ap.add_argument(
        "--surface-projection",
        type=float,
        default=None,
        metavar="S",
        help="base stage: S passes pulling points onto their local plane (0.5: half-way; 0: off)",
    )
    ap.add_argument(
        "--surface-upsampler",
        type=int,
        default=None,
        metavar="N",
        help="instead of --upsampler: add N points along the base cloud's surface (no weights)",
    )
    ap.add_argument("--up-sampler", default="dpmpp_2m")
    ap.add_argument("--up-steps", type=int, default=16)
    ap.add_argument("--base-points", type=int, default=None, help="ship the base at N points")
    ap.add_argument(
        "--up-points",
        type=int,
        nargs=2,
        default=None,
        metavar=("LOW", "NEW"),
        help="ship the upsampler at LOW condition points → NEW points",
    )
    ap.add_argument("--captions-from", default=None, help="shard dir: train-split captions")
    ap.add_argument(
        "--wordnet",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="write a WordNet lexicon for the captions (DIR default: /usr/share/wordnet)",
    )
    a = ap.parse_args()
    captions = aliases = None
    if a.captions_from:
        captions = [
            c
            for e in read_index(a.captions_from)
            if e["split"] == "train"
            for c in e.get("captions") or [e["caption"]]
        ]
    if a.wordnet is not None:
        if captions is None:
            ap.error("--wordnet needs --captions-from (the lexicon maps onto the captions' words)")
        try:
            vocab = vocab_counts(sorted(set(captions)))  # as base/captions.json keeps them
            aliases = build_aliases(WordNet.load(a.wordnet or None), vocab)
        except LexiconError as e:
            ap.error(str(e))
    given = {
        "sampler": a.sampler,
        "steps": a.steps,
        "guidance": a.guidance,
        "s_churn": a.s_churn,
        "stray_ratio": a.stray_ratio,
        "guidance_interval": None if a.guidance_interval is None else tuple(a.guidance_interval),
        "surface_projection": a.surface_projection,
    }
    sample = SampleConfig(**{k: v for k, v in given.items() if v is not None})
    up = SampleConfig(sampler=a.up_sampler, steps=a.up_steps, guidance=1.0, s_churn=0.0)
    points = {}
    if a.base_points:
        points["base"] = {"num_points": a.base_points}
    if a.up_points:
        points["upsampler"] = {"num_cond_points": a.up_points[0], "num_points": a.up_points[1]}
    out = export_pipeline(
        a.out,
        a.base,
        a.upsampler,
        a.sdf,
        sample,
        up,
        captions,
        points=points,
        aliases=aliases,
        surface_upsampler=a.surface_upsampler,
    )
    if a.captions_from:  # CC-BY asks for attribution of every model the weights were trained on
        rows = [e for e in read_index(a.captions_from) if e["split"] == "train"]
        lines = [
            "# Attribution: training objects",
            "",
            "| object | creator | catalog | licence |",
            "|---|---|---|---|",
        ]
        for e in sorted(rows, key=lambda e: e["id"]):
            lines.append(
                f"| {e.get('name', e['id'])} | {e.get('creator', '?')} | "
                f"{e.get('catalog', e['source'])} | {e['licence']} |"
            )
        (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")
    print(out)
