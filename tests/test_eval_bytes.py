"""Bits per byte: the UTF-8 bytes each token id stands for (signflax.train.evaluate)."""

import numpy as np
import pytest

from signflax import data as data_lib
from signflax.train import evaluate, hf

tokenizers = pytest.importorskip("tokenizers")

TEXT = ("def naïve(x):\n    return x  # ünïcode, emoji 😀 and CJK 漢字\n" * 20
        + "class Thing:\n    pass\n" * 20)


def _bpe(tmp_path, pre_tokenizer, decoder):
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None, byte_fallback=False))
  tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([TEXT], trainer)
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return data_lib.HFTokenizer(str(path))


def test_byte_tokenizer_counts_bytes_and_no_separators():
  lengths = evaluate.token_byte_lengths(data_lib.ByteTokenizer(), 384)
  assert lengths[:256].tolist() == [1] * 256 and not lengths[256:].any()


def test_byte_level_bpe_tokens_sum_to_the_text_bytes(tmp_path):
  tok = _bpe(tmp_path, tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False),
             tokenizers.decoders.ByteLevel())
  lengths = evaluate.token_byte_lengths(tok, 512)
  ids = tok.encode(TEXT)
  assert len(ids) < len(TEXT.encode()) / 2            # merges happened
  assert lengths[ids].sum() == len(TEXT.encode("utf-8"))
  assert lengths[tok.eos_id] == 0 and not lengths[tok.vocab_size:].any()


def test_exported_byte_tokenizer_json_counts_like_the_byte_tokenizer(tmp_path):
  path = tmp_path / "tokenizer.json"
  path.write_text(hf.byte_tokenizer_json())
  tok = data_lib.HFTokenizer(str(path))
  np.testing.assert_array_equal(evaluate.token_byte_lengths(tok, 384),
                                evaluate.token_byte_lengths(data_lib.ByteTokenizer(), 384))
