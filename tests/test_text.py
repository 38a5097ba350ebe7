import json
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pointdiff.conditioning.prompts import PromptError, check_prompts
from pointdiff.conditioning.text import TextEncoder, TextEncoderError
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
        again = TextEncoder.load(src)
        assert torch.equal(again.embed(PROMPTS), tiny.embed(PROMPTS))
    # and through a TextConfig naming the saved directory
    cfg = TextConfig(arch="tiny", pretrained=str(tmp_path / "enc"))
    assert torch.equal(TextEncoder.from_text_config(cfg).embed(PROMPTS), tiny.embed(PROMPTS))


def test_trainable_encoder_has_gradients_and_no_cache():
    enc = TextEncoder.from_text_config(TextConfig(arch="tiny", trainable=True), seed=0)
    assert enc.trainable and enc.training
    e = enc.embed(["a lamp", "a lamp"])
    e.sum().backward()
    assert enc.tower.token_embedding.weight.grad is not None and not enc._cache
    enc.eval()
    assert not enc.embed(["a lamp"]).requires_grad


def test_missing_pretrained_weights_fail_at_once_naming_the_local_file_option(tmp_path):
    t = time.perf_counter()
    with pytest.raises(TextEncoderError) as err:
        TextEncoder.from_pretrained("ViT-L-14", "openai", cache_dir=tmp_path)
    assert time.perf_counter() - t < 2.0  # no network attempt
    msg = str(err.value)
    assert "--clip-weights PATH" in msg and "pretrained=PATH" in msg and str(tmp_path) in msg
    with pytest.raises(TextEncoderError, match="neither a file nor a known open_clip tag"):
        TextEncoder.from_pretrained("ViT-L-14", str(tmp_path / "nope.safetensors"))
    with pytest.raises(TextEncoderError, match="unknown open_clip architecture"):
        TextEncoder.from_pretrained("ViT-XXL-99", "openai")


@pytest.fixture(scope="module")
def tiny_clip_arch(tmp_path_factory):
    """A registered open_clip architecture small enough to build a whole CLIP in a test."""
    d = tmp_path_factory.mktemp("clipcfg")
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    }
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
    again = TextEncoder.load(tmp_path / "enc")
    assert isinstance(again, WordEncoder) and torch.equal(again.embed(PROMPTS), enc.embed(PROMPTS))
    cfg = TextConfig(arch="words-32", pretrained="", trainable=False)
    assert torch.equal(TextEncoder.from_text_config(cfg).embed(PROMPTS), enc.embed(PROMPTS))
    with pytest.raises(ValueError, match="unknown words encoder"):
        WordEncoder.from_arch("words-big")
    with pytest.raises(TextEncoderError, match="unknown words encoder"):
        TextEncoder.from_text_config(TextConfig(arch="words-big", pretrained=""))


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
