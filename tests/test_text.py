import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pointdiff.conditioning import clip_weights
from pointdiff.conditioning.prompts import PromptError, check_prompts
from pointdiff.conditioning.text import TextEncoder, TextEncoderError, clip_text_config
from pointdiff.conditioning.text_loading import build_text_encoder, load_text_encoder
from pointdiff.conditioning.words import WordEncoder
from pointdiff.config import TextConfig

PROMPTS = ["a red chair", "a small wooden boat", "a red chair", "the"]


@pytest.fixture(scope="module")
def tiny():
    return TextEncoder.from_config("tiny", seed=0).freeze()


def test_embed_shape_norm_batching_and_cache(tiny):
    e = tiny.embed(PROMPTS, batch_size=2)
    assert e.shape == (4, 32) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    assert torch.equal(e[0], e[2])  # same prompt, same embedding
    assert not torch.allclose(e[0], e[1])
    assert len(tiny._cache) == 3  # one entry per distinct prompt
    # batching does not change the result beyond float noise
    torch.testing.assert_close(TextEncoder.from_config("tiny", seed=0).embed(PROMPTS[:2]), e[:2])


def test_save_load_round_trip_gives_identical_embeddings(tiny, tmp_path):
    tiny.clear_cache()  # earlier tests filled it with other batch compositions
    tiny.save(tmp_path / "enc")
    assert {p.name for p in (tmp_path / "enc").iterdir()} == {
        "text.safetensors",
        "text_config.json",
    }
    for src in (tmp_path / "enc", tmp_path / "enc" / "text.safetensors"):
        again = load_text_encoder(src)
        assert torch.equal(again.embed(PROMPTS), tiny.embed(PROMPTS))
    # and through a TextConfig naming the saved directory
    cfg = TextConfig(arch="tiny", pretrained=str(tmp_path / "enc"))
    assert torch.equal(build_text_encoder(cfg).embed(PROMPTS), tiny.embed(PROMPTS))


def test_trainable_encoder_has_gradients_and_no_cache():
    enc = build_text_encoder(TextConfig(arch="tiny", trainable=True), seed=0)
    assert enc.trainable and enc.training
    e = enc.embed(["a lamp", "a lamp"])
    e.sum().backward()
    assert enc.tower.token_embedding.weight.grad is not None and not enc._cache
    enc.eval()
    assert not enc.embed(["a lamp"]).requires_grad


def test_missing_pretrained_weights_fail_at_once_naming_the_local_file_option(tmp_path):
    t = time.perf_counter()
    with pytest.raises(TextEncoderError) as err:
        TextEncoder.from_pretrained("ViT-L-14", "openai", cache_dir=tmp_path, download=False)
    assert time.perf_counter() - t < 2.0  # no network attempt
    msg = str(err.value)
    assert "--clip-weights PATH" in msg and "pretrained=PATH" in msg and str(tmp_path) in msg
    assert "does not download" in msg and "POINTDIFF_CLIP_WEIGHTS=PATH" in msg
    with pytest.raises(TextEncoderError, match="neither a file nor a known open_clip tag"):
        TextEncoder.from_pretrained("ViT-L-14", str(tmp_path / "nope.safetensors"))
    with pytest.raises(TextEncoderError, match="unknown open_clip architecture"):
        TextEncoder.from_pretrained("ViT-XXL-99", "openai")


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory, tiny_clip_config):
    """A registered open_clip architecture small enough to build a whole CLIP in a test."""
    d = tmp_path_factory.mktemp("clipcfg")
    cfg = tiny_clip_config(embed_dim=16, text_layers=2)
    (d / "pdtest-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "pdtest-tiny-clip"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_clip_weights_file_matches_open_clip_encode_text(tiny_clip_arch, tmp_path, suffix):
    torch.manual_seed(0)
    clip = open_clip.create_model(tiny_clip_arch).eval()
    path = tmp_path / f"clip{suffix}"
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}  # full CLIP incl. visual
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    enc = TextEncoder.from_pretrained(tiny_clip_arch, str(path))
    assert not enc.trainable and not any(k.startswith("visual") for k in enc.state_dict())
    prompts = ["a red chair", "a corgi"]
    with torch.no_grad():
        ref = F.normalize(clip.encode_text(open_clip.tokenize(prompts)), dim=-1)
    torch.testing.assert_close(enc.embed(prompts), ref)
    # the --clip-weights form: a tag's weights handed over as a local file
    again = TextEncoder.from_pretrained(tiny_clip_arch, "", weights=str(path))
    assert torch.equal(again.embed(prompts), enc.embed(prompts))


def test_wrong_weights_file_is_a_clear_error(tiny_clip_arch, tmp_path):
    save_file({"foo": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(TextEncoderError, match="not CLIP text-tower weights"):
        TextEncoder.from_pretrained(tiny_clip_arch, str(tmp_path / "w.safetensors"))
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(TextEncoderError, match="cannot read"):
        TextEncoder.from_pretrained(tiny_clip_arch, str(tmp_path / "junk.bin"))


# ----------------------------------------------------------------------------------------------
# WordEncoder: the frozen hashed bag of words


def test_word_encoder_separates_prompts_by_their_words():
    enc = WordEncoder.from_arch("words")
    assert enc.dim == 512 and not enc.trainable
    assert WordEncoder.words("A Chair, seat (living-room) of 3D") == [
        "chair",
        "seat",
        "living",
        "room",
    ]
    e = enc.embed(["a chair", "the chair!", "a wine bottle", "a chair (kitchen)", "a", "of the"])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(6))
    cos = e @ e.T
    assert cos[0, 1] == pytest.approx(1.0)  # same content words, same embedding
    assert abs(cos[0, 2]) < 0.2  # no shared word: nearly orthogonal (std 1/√512 = 0.044)
    assert cos[0, 3] == pytest.approx(2**-0.5, abs=0.15)  # one of two words shared
    assert torch.equal(e[4], e[5])  # no content word: the "<empty>" vector, not NaN
    # fixed by the hash: a new instance (any process, any machine) gives the same vectors
    assert torch.equal(WordEncoder(512).embed(["a wine bottle"])[0], e[2])
    torch.testing.assert_close(WordEncoder(8).word_vector("chair").abs(), torch.full((8,), 8**-0.5))


def test_word_encoder_save_load_and_config_round_trip(tmp_path):
    enc = WordEncoder.from_arch("words-32")
    enc.save(tmp_path / "enc")
    assert [p.name for p in (tmp_path / "enc").iterdir()] == ["text_config.json"]
    again = load_text_encoder(tmp_path / "enc")
    assert isinstance(again, WordEncoder) and torch.equal(again.embed(PROMPTS), enc.embed(PROMPTS))
    cfg = TextConfig(arch="words-32", pretrained="", trainable=False)
    assert torch.equal(build_text_encoder(cfg).embed(PROMPTS), enc.embed(PROMPTS))
    with pytest.raises(ValueError, match="unknown words encoder"):
        WordEncoder.from_arch("words-big")
    with pytest.raises(TextEncoderError, match="unknown words encoder"):
        build_text_encoder(TextConfig(arch="words-big", pretrained=""))


@pytest.mark.parametrize(
    "prompts, match",
    [
        ("a chair", "list of strings.*wrap a single prompt"),
        ([], "empty"),
        (["a chair", "  "], "non-empty string"),
        (["a chair", 3], "non-empty string"),
        ([None], "non-empty string"),
        (None, "list of strings"),
    ],
)
def test_one_prompt_check_for_every_encoder(tiny, prompts, match):
    with pytest.raises(PromptError, match=match):
        check_prompts(prompts)
    for enc in (tiny, WordEncoder(8)):
        with pytest.raises(PromptError, match=match):
            enc.embed(prompts)
    check_prompts(("a chair", "the"))  # tuples are lists too


# ----------------------------------------------------------------------------------------------
# Frozen CLIP weights: downloaded by default, recorded by tag and hash, never by path

TAG = "pdtest"
URL = "https://example.invalid/clip/pdtest-tiny.pt"


@pytest.fixture
def fake_hub(tiny_clip_arch, tmp_path, monkeypatch):
    """A pretrained tag of the tiny arch whose "download" copies a local file (no network):
    ``HOME`` is a temporary folder, so open_clip's cache ``~/.cache/clip`` starts empty."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POINTDIFF_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tags = {TAG: open_clip.pretrained._pcfg(url=URL)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_clip_arch, tags)
    torch.manual_seed(1)
    served = tmp_path / "served.pt"
    torch.save(open_clip.create_model(tiny_clip_arch).state_dict(), served)
    calls = []

    def download_pretrained(cfg, cache_dir=None):  # open_clip's, without the network
        calls.append(cfg["url"])
        target = Path(cache_dir or Path("~/.cache/clip").expanduser()) / Path(cfg["url"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(served, target)
        return str(target)

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])
    monkeypatch.setattr(open_clip, "download_pretrained", download_pretrained)
    return SimpleNamespace(arch=tiny_clip_arch, served=served, calls=calls, home=tmp_path / "home")


def test_a_missing_tag_is_downloaded_once_with_a_message_and_recorded_by_hash(
    fake_hub, capsys, monkeypatch
):
    enc = TextEncoder.from_pretrained(fake_hub.arch, TAG)
    cached = fake_hub.home / ".cache" / "clip" / "pdtest-tiny.pt"
    assert fake_hub.calls == [URL] and cached.is_file()
    err = capsys.readouterr().err
    assert f"downloading CLIP {fake_hub.arch}/{TAG} weights from {URL} to {cached}" in err
    again = TextEncoder.from_pretrained(fake_hub.arch, TAG)  # the cache: no second download
    assert fake_hub.calls == [URL] and torch.equal(again.embed(PROMPTS), enc.embed(PROMPTS))
    # the checkpoint record: tag + SHA-256 of the tower weights, no path
    cfg = clip_text_config(enc)
    assert cfg == TextConfig(arch=fake_hub.arch, pretrained=f"{TAG}@sha256:{enc.spec['sha256']}")
    assert len(enc.spec["sha256"]) == 64 and os.sep not in cfg.pretrained
    rebuilt = build_text_encoder(cfg)
    assert torch.equal(rebuilt.embed(PROMPTS), enc.embed(PROMPTS))
    # other copies of the same weights are found by --clip-weights / the environment
    for hand_over in ({"clip_weights": str(fake_hub.served)}, {}):
        if not hand_over:
            cached.unlink()
            monkeypatch.setenv("POINTDIFF_CLIP_WEIGHTS", str(fake_hub.served))
        got = build_text_encoder(cfg, download=False, **hand_over)
        assert torch.equal(got.embed(PROMPTS), enc.embed(PROMPTS))
    assert fake_hub.calls == [URL]


def test_other_weights_than_the_recorded_ones_are_refused(fake_hub, tmp_path):
    cfg = clip_text_config(TextEncoder.from_pretrained(fake_hub.arch, TAG))
    torch.manual_seed(2)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(fake_hub.arch).state_dict(), other)
    with pytest.raises(TextEncoderError, match="not the [0-9a-f]{64} this checkpoint was"):
        build_text_encoder(cfg, clip_weights=str(other))
    # weights from a file of no tag are recorded by hash alone and must be handed over again
    enc = TextEncoder.from_pretrained(fake_hub.arch, str(other))
    record = clip_text_config(enc)
    assert record.pretrained == f"sha256:{enc.spec['sha256']}"
    with pytest.raises(TextEncoderError, match="came from a local file.*--clip-weights PATH"):
        build_text_encoder(record)
    again = build_text_encoder(record, clip_weights=str(other))
    assert again.spec["sha256"] == enc.spec["sha256"]


def test_an_offline_download_fails_fast_naming_what_to_fetch_and_where(fake_hub, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t = time.perf_counter()
    with pytest.raises(TextEncoderError) as err:
        TextEncoder.from_pretrained(fake_hub.arch, TAG)
    assert time.perf_counter() - t < 2.0 and not fake_hub.calls
    msg = str(err.value)
    cached = fake_hub.home / ".cache" / "clip" / "pdtest-tiny.pt"
    assert f"the download from {URL} failed (gaierror" in msg
    assert f"Download {URL} on a machine with the internet and copy it to {cached}" in msg
    assert "--clip-weights PATH" in msg and "POINTDIFF_CLIP_WEIGHTS=PATH" in msg
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub's own switch also means: no download
    with pytest.raises(TextEncoderError, match="HF_HUB_OFFLINE is set"):
        TextEncoder.from_pretrained(fake_hub.arch, TAG)


def test_tower_hash_depends_on_values_not_on_the_file_format(tiny_clip_arch, tmp_path):
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in open_clip.create_model(tiny_clip_arch).state_dict().items()}
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "b.pt"
    )
    a = TextEncoder.from_pretrained(tiny_clip_arch, str(tmp_path / "a.safetensors"))
    b = TextEncoder.from_pretrained(tiny_clip_arch, str(tmp_path / "b.pt"))
    assert a.spec["sha256"] == clip_weights.tower_sha256(a.tower.state_dict())
    assert a.spec["sha256"] != b.spec["sha256"]  # fp16 rounding changed the values
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()}
    save_file(half, str(tmp_path / "c.safetensors"))
    c = TextEncoder.from_pretrained(tiny_clip_arch, str(tmp_path / "c.safetensors"))
    assert c.spec["sha256"] == b.spec["sha256"]  # same values, other format: same hash


RANK_SCRIPT = """
import json, os, shutil, sys, time
from pathlib import Path
import open_clip, torch, torch.distributed as tdist
from pointdiff.conditioning.text_loading import load_frozen_clip

root = Path(sys.argv[1])
open_clip.add_model_config(root / "cfg")
open_clip.pretrained._PRETRAINED["pdtest-tiny-clip"] = {"pdtest": open_clip.pretrained._pcfg(
    url="https://example.invalid/clip/pdtest-tiny.pt")}
rank = int(os.environ["RANK"])

def download_pretrained(cfg, cache_dir=None):
    with open(root / "downloads.log", "a") as f:
        f.write(f"{rank} {time.time()}\\n")
    time.sleep(0.5)  # a slow network: the other rank must wait, not download too
    target = Path(os.path.expanduser("~/.cache/clip")) / "pdtest-tiny.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "served.pt", target)
    return str(target)

tdist.init_process_group("gloo")
import socket
socket.getaddrinfo = lambda *a, **k: []
open_clip.download_pretrained = download_pretrained
enc, cfg = load_frozen_clip("pdtest-tiny-clip", "pdtest")
(root / f"rank{rank}.json").write_text(json.dumps([cfg.pretrained, time.time()]))
tdist.destroy_process_group()
"""


@pytest.mark.slow
def test_ranks_of_a_node_download_once_local_rank_0_first(tiny_clip_arch, tmp_path):
    (tmp_path / "cfg").mkdir()
    cfg = open_clip.get_model_config(tiny_clip_arch)
    (tmp_path / "cfg" / f"{tiny_clip_arch}.json").write_text(json.dumps(cfg))
    torch.manual_seed(1)
    torch.save(open_clip.create_model(tiny_clip_arch).state_dict(), tmp_path / "served.pt")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    env.pop("POINTDIFF_CLIP_WEIGHTS", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run(
        [*cmd, str(tmp_path / "rank.py"), str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    downloads = (tmp_path / "downloads.log").read_text().split()
    assert downloads[0] == "0" and len(downloads) == 2  # one download, by local rank 0
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0][0] == records[1][0] and records[0][0].startswith(f"{TAG}@sha256:")
    assert records[1][1] >= float(downloads[1]) + 0.5  # rank 1 finished after the download


def test_sampling_the_shipped_kind_of_model_does_not_import_open_clip():
    """open_clip takes seconds to import: only a CLIP encoder (or a point-e pipeline) loads it,
    not the command line, the pipeline or an hf:/words model."""
    import subprocess
    import sys

    code = (
        "import sys, pointdiff.cli, pointdiff.pipeline, pointdiff.outputs; "
        "from pointdiff.conditioning.text_loading import build_text_encoder; "
        "build_text_encoder(__import__('pointdiff.config').config.TextConfig("
        "arch='words-32', pretrained=''));"
        "sys.exit(1 if 'open_clip' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
