"""The OpenAI BPE merges file ships inside the package: found through importlib.resources,
with its licence beside it, and `load_clip_tokenizer()` gives OpenAI's golden ids from it."""

import hashlib
import importlib.resources
import json

import numpy as np
import pytest

from jaxmm.data import tokenizer as tok_lib

# sha256 of openai/CLIP's clip/bpe_simple_vocab_16e6.txt.gz (the same bytes as open_clip's).
OPENAI_MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


@pytest.fixture(scope="module")
def packaged_tok():
    return tok_lib.load_clip_tokenizer()


def test_merges_and_licence_are_package_resources():
    assets = importlib.resources.files("jaxmm.data").joinpath("assets")
    merges = assets.joinpath("bpe_simple_vocab_16e6.txt.gz")
    assert merges.is_file()
    assert hashlib.sha256(merges.read_bytes()).hexdigest() == OPENAI_MERGES_SHA256
    licence = assets.joinpath("LICENSE-openai-clip.txt").read_text()
    assert "MIT License" in licence and "Copyright (c) 2021 OpenAI" in licence
    assert tok_lib.packaged_merges().read_bytes() == merges.read_bytes()


def test_default_tokenizer_is_openai_vocab(packaged_tok):
    assert packaged_tok.vocab_size == tok_lib.CLIP_VOCAB_SIZE == 49408
    assert (packaged_tok.sot_id, packaged_tok.eot_id) == (49406, 49407)
    # The README's example line.
    expected = [49406, 320, 1125, 539, 320, 1929, 49407, 0]
    assert packaged_tok(["a photo of a dog"], context_length=77)[0, :8].tolist() == expected
    # A config's "not set" (empty string) means the packaged file too.
    assert tok_lib.load_clip_tokenizer("")("a photo of a dog").tolist() == [
        packaged_tok("a photo of a dog")[0].tolist()
    ]


def test_default_tokenizer_matches_openai_golden_ids(packaged_tok, shared_data):
    ref = json.loads((shared_data / "clip_bpe" / "reference_tokens.json").read_text())
    assert (ref["vocab_size"], ref["sot"], ref["eot"]) == (49408, 49406, 49407)
    texts = [example["text"] for example in ref["examples"]]
    padded = np.array([e["ids_context77_padded_with_sot_eot"] for e in ref["examples"]])
    np.testing.assert_array_equal(packaged_tok(texts, context_length=77), padded)
    for example in ref["examples"]:
        assert packaged_tok.encode(example["text"]) == example["ids_without_sot_eot"]


def test_missing_merges_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        tok_lib.load_clip_tokenizer(tmp_path / "nope.txt.gz")


def test_configs_with_openai_vocab_need_no_merges_path(tmp_path):
    from configs import clip_b16
    from jaxmm.train import tasks

    config = clip_b16.get_config().tokenizer
    assert config.kind == "clip" and config.merges_path == ""
    tok = tasks.build_tokenizer(config, builder=None, workdir=tmp_path)
    assert tok.vocab_size == 49408 and (tmp_path / tasks.TOKENIZER_FILE).is_file()
    assert tok("a photo of a dog")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 1929, 49407]
