"""Tests of signflax.data: tokenizers, splits, packing, Grain iterators, prepare-data."""

import collections
import json
import math
import os
import sys

import numpy as np
import pytest

from signflax import data
from signflax.data import prepare
from signflax.data import sources

SEQ, BATCH = 16, 8


def _config(**overrides):
  config = data.default_data_config()
  for k, v in overrides.items():
    config[k] = v
  return config


def _stdlib(max_bytes=200_000, **overrides):
  return _config(source="stdlib", max_bytes=max_bytes, **overrides)


@pytest.fixture
def text_dir(tmp_path):
  """Six small text files of distinct content (about 15 kB)."""
  d = tmp_path / "corpus"
  d.mkdir()
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "λ", "ünïcode", "\n", "x = 1\n"]
  for i in range(6):
    text = " ".join(rng.choice(words, size=400 + 50 * i))
    (d / f"doc{i}.txt").write_text(f"# file {i}\n{text}\n", encoding="utf-8")
  return d


@pytest.fixture
def counting(tmp_path):
  """A text config whose every window is unique: lines '0000000', '0000001', ..."""
  path = tmp_path / "counting.txt"
  path.write_text("".join(f"{i:07d}\n" for i in range(4000)))  # 32 kB
  return _config(source="text", paths=str(path), eval_fraction=0.25)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------
# Tokenizers.


def test_byte_tokenizer_round_trip():
  tok = data.build_tokenizer(data.default_data_config())
  assert (tok.vocab_size, tok.eos_id, tok.bos_id) == (258, 256, 257)
  text = "def f(x):\n  return 'λ ü 😀'\n"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
  assert ids.max() < 256
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([[tok.bos_id], ids, [tok.eos_id]])) == text  # specials dropped
  np.testing.assert_array_equal(tok.encode_bytes(text.encode()), ids)


def _write_hf_tokenizer(path, texts, with_eos=True):
  tokenizers = pytest.importorskip("tokenizers")
  hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tokenizers.decoders.ByteLevel()
  special = ["[UNK]", "<|endoftext|>"] if with_eos else ["[UNK]"]
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=special,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  hf.train_from_iterator(texts, trainer)
  hf.save(str(path))
  return path


def test_hf_tokenizer_json(tmp_path, text_dir):
  texts = [p.read_text() for p in sorted(text_dir.iterdir())]
  path = _write_hf_tokenizer(tmp_path / "tokenizer.json", texts)
  config = _config(source="text", paths=str(text_dir), tokenizer=str(path))
  tok = data.build_tokenizer(config)
  assert tok.vocab_size == 300 and tok.eos_id == 1 and tok.bos_id == tok.eos_id
  ids = tok.encode("gamma delta λ")
  assert ids.dtype == np.int32 and tok.decode(ids) == "gamma delta λ"
  # The stream is the documents' encodings joined by EOS, fewer tokens than bytes.
  stream = data.split_tokens(config, "train")
  assert stream.max() < tok.vocab_size and (stream == tok.eos_id).sum() == 6
  assert data.split_num_tokens(config, "train") == len(stream)
  assert len(stream) < sum(len(t.encode()) for t in texts) // 2
  batch = next(data.make_iterator(config, split="train", seq_len=SEQ, global_batch_size=4, seed=0))
  assert batch["inputs"].shape == (4, SEQ) and batch["inputs"].max() < tok.vocab_size


def test_hf_tokenizer_without_eos_appends_one(tmp_path, text_dir):
  path = _write_hf_tokenizer(tmp_path / "tokenizer.json", ["a b c"], with_eos=False)
  tokenizers = pytest.importorskip("tokenizers")
  hf_size = tokenizers.Tokenizer.from_file(str(path)).get_vocab_size()
  tok = data.build_tokenizer(_config(tokenizer=str(path)))
  assert (tok.eos_id, tok.bos_id, tok.vocab_size) == (hf_size, hf_size, hf_size + 1)
  ids = np.concatenate([tok.encode("a b"), [tok.eos_id]])
  assert tok.decode(ids) == "a b"  # the appended separator decodes to nothing


def test_tokenizers_package_missing_is_one_line(tmp_path, monkeypatch):
  path = tmp_path / "tokenizer.json"
  path.write_text("{}")
  monkeypatch.setitem(sys.modules, "tokenizers", None)  # import now raises ImportError
  with pytest.raises(ValueError, match=r"^config\.data\.tokenizer: .*pip install tokenizers"):
    data.build_tokenizer(_config(tokenizer=str(path)))


# ---------------------------------------------------------------------------
# Splits.


def test_stdlib_split_by_file_is_disjoint():
  corpus = sources.list_corpus("stdlib")
  assert len(corpus.paths) > 100 and all(p.endswith(".py") for p in corpus.paths)
  assert not any("site-packages" in p for p in corpus.paths)
  train = sources.split_docs(corpus, "train", eval_fraction=0.1, split_by="file")
  eval_ = sources.split_docs(corpus, "eval", eval_fraction=0.1, split_by="file")
  train_files, eval_files = {d.path for d in train}, {d.path for d in eval_}
  assert not train_files & eval_files
  assert all(d.start == 0 for d in train + eval_)  # whole files
  nonempty = {p for p, s in zip(corpus.paths, corpus.sizes) if s}
  assert train_files | eval_files == nonempty
  assert 0.05 < len(eval_files) / len(nonempty) < 0.15


def test_tail_split_and_max_bytes(text_dir):
  corpus = sources.list_corpus("text", str(text_dir / "*.txt"))
  train = sources.split_docs(corpus, "train", eval_fraction=0.2, split_by="tail")
  eval_ = sources.split_docs(corpus, "eval", eval_fraction=0.2, split_by="tail")
  assert sources.docs_bytes(train) + sources.docs_bytes(eval_) == corpus.num_bytes
  for t, e in zip(train, eval_):  # same file, adjacent non-overlapping ranges
    assert t.path == e.path and t.start == 0 and t.stop == e.start
  capped = {s: sources.split_docs(corpus, s, eval_fraction=0.2, split_by="tail", max_bytes=1000)
            for s in ("train", "eval")}
  assert sources.docs_bytes(capped["train"]) == 800
  assert sources.docs_bytes(capped["eval"]) == 200
  # A cap takes a prefix of the uncapped split: growing max_bytes only adds text.
  assert capped["train"][0].path == train[0].path and capped["train"][0].start == 0


def test_stream_is_docs_joined_by_eos(text_dir):
  config = _config(source="text", paths=str(text_dir), eval_fraction=0.25)
  for split in ("train", "eval"):
    stream = data.split_tokens(config, split)
    docs = sources.split_docs(sources.list_corpus("text", str(text_dir)), split,
                              eval_fraction=0.25, split_by="tail")
    expected = b"".join(sources.read_doc(d) + b"\xff" for d in docs)  # 0xff marks EOS here
    got = np.where(stream == 256, 255, stream).astype(np.uint8).tobytes()
    assert got == expected
    assert data.split_num_tokens(config, split) == len(stream)


# ---------------------------------------------------------------------------
# Iterators.


def test_batches_are_shifted_windows_of_the_stream():
  config = _stdlib()
  stream = data.split_tokens(config, "eval").astype(np.int32)
  it = data.make_iterator(config, split="eval", seq_len=SEQ, global_batch_size=BATCH, seed=0)
  for step in range(3):
    batch = next(it)
    assert set(batch) == {"inputs", "targets"}
    for v in batch.values():
      assert v.shape == (BATCH, SEQ) and v.dtype == np.int32
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    for row in range(BATCH):  # eval is in order: row r of step s is window s*B + r
      start = (step * BATCH + row) * SEQ
      np.testing.assert_array_equal(batch["inputs"][row], stream[start:start + SEQ])
      np.testing.assert_array_equal(batch["targets"][row], stream[start + 1:start + SEQ + 1])


def test_same_seed_same_batches_other_seed_other_batches():
  config = _stdlib()
  kw = dict(split="train", seq_len=SEQ, global_batch_size=BATCH)
  a = _take(data.make_iterator(config, seed=3, **kw), 5)
  b = _take(data.make_iterator(config, seed=3, **kw), 5)
  c = _take(data.make_iterator(config, seed=4, **kw), 5)
  _assert_same(a, b)
  assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_restore_resumes_exactly(prefetch):
  config = _stdlib(prefetch=prefetch)
  kw = dict(split="train", seq_len=SEQ, global_batch_size=BATCH, seed=7)
  uninterrupted = _take(data.make_iterator(config, **kw), 10)
  it = data.make_iterator(config, **kw)
  _take(it, 4)
  state = it.get_state()
  state = json.loads(json.dumps(state))  # it survives serialization
  resumed = data.make_iterator(config, **kw)
  resumed.set_state(state)
  _assert_same(_take(resumed, 6), uninterrupted[4:])


def test_worker_processes_give_the_same_batches_and_resume():
  config = _stdlib()
  kw = dict(split="train", seq_len=SEQ, global_batch_size=BATCH, seed=2)
  reference = _take(data.make_iterator(config, **kw), 6)
  config.num_workers = 1  # one spawned process per iterator: the slowest test here
  it = data.make_iterator(config, **kw)
  first = _take(it, 3)
  resumed = data.make_iterator(config, **kw)
  resumed.set_state(it.get_state())
  rest = _take(resumed, 3)
  it.close()
  resumed.close()
  _assert_same(first + rest, reference)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_process_shares_partition_the_global_batch(split, counting):
  config = counting
  kw = dict(split=split, seq_len=SEQ, global_batch_size=BATCH, seed=1)
  whole = _take(data.make_iterator(config, **kw), 3)
  shares = [_take(data.make_iterator(config, process_index=p, process_count=2, **kw), 3)
            for p in range(2)]
  for step in range(3):
    for p in range(2):
      assert shares[p][step]["inputs"].shape == (BATCH // 2, SEQ)
    for k in ("inputs", "targets"):
      np.testing.assert_array_equal(
          np.concatenate([shares[0][step][k], shares[1][step][k]]), whole[step][k])
    rows = [{r.tobytes() for r in shares[p][step]["inputs"]} for p in range(2)]
    assert not rows[0] & rows[1]


def test_train_epoch_is_a_permutation_and_eval_is_finite(text_dir):
  config = _config(source="text", paths=str(text_dir), eval_fraction=0.2)
  n = {s: sources.num_windows(len(data.split_tokens(config, s)), SEQ) for s in ("train", "eval")}
  kw = dict(seq_len=SEQ, global_batch_size=4, seed=0)
  one_epoch = list(data.make_iterator(config, split="train", num_epochs=1, **kw))
  assert len(one_epoch) == n["train"] // 4
  rows = [r.tobytes() for b in one_epoch for r in b["inputs"]]
  windows = sources.ArrayWindows(data.split_tokens(config, "train"), SEQ)
  in_order = [windows[i][:-1].tobytes() for i in range(len(windows))]
  assert rows != in_order[:len(rows)]  # shuffled ...
  # ... without replacement: distinct windows (the remainder of n % 4 is dropped).
  assert not collections.Counter(rows) - collections.Counter(in_order)
  evals = list(data.make_iterator(config, split="eval", **kw))  # num_epochs None -> one pass
  assert len(evals) == n["eval"] // 4
  # Train repeats forever and reshuffles: epoch 2 differs from epoch 1.
  it = data.make_iterator(config, split="train", **kw)
  e1, e2 = _take(it, len(one_epoch)), _take(it, len(one_epoch))
  _assert_same(e1, one_epoch)
  assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(e1, e2))
  # Seed 1's first epoch is not seed 0's second (seeds are mixed before grain adds the epoch).
  other = _take(data.make_iterator(config, split="train", **{**kw, "seed": 1}), len(one_epoch))
  assert not np.array_equal(other[0]["inputs"], e2[0]["inputs"])


def test_unigram_entropy_of_known_corpus(tmp_path):
  (tmp_path / "ab.txt").write_text("ab" * 500 + "aaaa" * 50)  # 1200 bytes
  config = _config(source="text", paths=str(tmp_path / "ab.txt"), eval_fraction=0.25)
  # eval = the last 300 bytes: 'ab' * 50 + 'a' * 200, then one EOS.
  counts = {"a": 250, "b": 50, "eos": 1}
  p = np.array(list(counts.values())) / 301
  assert data.unigram_entropy(config) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)
  assert data.entropy([1, 1, 0, 1, 1]) == pytest.approx(math.log(4))


def test_stdlib_eval_entropy_is_bytes_like():
  h = data.unigram_entropy(_stdlib())
  assert 2.0 < h < math.log(256)


# ---------------------------------------------------------------------------
# validate(): one-line errors naming the field.


@pytest.mark.parametrize("overrides, batch, processes, pattern", [
    (dict(source="web"), 8, 1, r"^config\.data\.source: 'web' is not one of stdlib"),
    (dict(tokenizer="gpt2"), 8, 1, r"^config\.data\.tokenizer: unknown tokenizer 'gpt2'"),
    (dict(tokenizer="/nope/tokenizer.json"), 8, 1, r"^config\.data\.tokenizer: no such file"),
    (dict(source="text", paths="{tmp}/*.txt"), 8, 1,
     r"^config\.data\.paths: no files match '.*/\*\.txt'$"),
    (dict(source="text", paths=""), 8, 1, r"^config\.data\.paths: required"),
    (dict(source="text", paths="{tmp}/empty.md"), 8, 1,
     r"^config\.data\.paths: the corpus is empty"),
    (dict(source="text", paths="{tmp}/small.md"), 8, 1,
     r"^config\.data: the (train|eval) split has \d+ tokens .* fewer than one global batch of 8"),
    (dict(source="stdlib"), 9, 2, r"^global_batch_size: 9 is not divisible by the 2 processes"),
    (dict(eval_fraction=1.5), 8, 1, r"^config\.data\.eval_fraction: must be a finite number in \(0, 1\)"),
    (dict(split_by="random"), 8, 1, r"^config\.data\.split_by: 'random' is not one of"),
    (dict(max_bytes=-1), 8, 1, r"^config\.data\.max_bytes: must be an integer >= 0"),
    (dict(source="arrayrecord", paths="{tmp}"), 8, 1,
     r"^config\.data\.paths: no manifest\.json in"),
    (dict(source="stdlib", max_bytes=1000), 8, 1, r"^config\.data: the (train|eval) split has"),
    (dict(source="text", paths="{tmp}/small.md", split_by="file"), 1, 1,
     r"^config\.data\.eval_fraction: none of the 1 files falls in the (train|eval) split"),
    (dict(source="text", paths="{tmp}/small.md", eval_fraction=0.01), 1, 1,
     r"^config\.data\.eval_fraction: 0\.01 of the 36-byte corpus leaves the eval split empty"),
    (dict(source="text", paths="{tmp}/small.md", max_bytes=1), 1, 1,
     r"^config\.data\.max_bytes: 1 leaves no text for the train split"),
    (dict(prefetch=-2), 8, 1, r"^config\.data\.prefetch: must be an integer >= 0"),
])
def test_validate_errors(tmp_path, overrides, batch, processes, pattern):
  (tmp_path / "empty.md").write_text("")
  (tmp_path / "small.md").write_text("tiny corpus\n" * 3)
  overrides = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
               for k, v in overrides.items()}
  with pytest.raises(ValueError, match=pattern) as e:
    data.validate(_config(**overrides), seq_len=SEQ, global_batch_size=batch,
                  process_count=processes)
  assert "\n" not in str(e.value)


def test_validate_accepts_defaults_and_describe_counts_tokens():
  config = data.default_data_config()
  data.validate(config, seq_len=256, global_batch_size=32, process_count=4)
  info = data.describe(_stdlib(), seq_len=SEQ)
  assert info["vocab_size"] == 258
  assert info["eval_tokens"] == len(data.split_tokens(_stdlib(), "eval"))
  assert info["train_windows"] == (info["train_tokens"] - 1) // SEQ


# ---------------------------------------------------------------------------
# prepare-data.


def test_prepare_data_round_trip(tmp_path, text_dir, capsys):
  out = tmp_path / "shards"
  rc = prepare.main(["--input", str(text_dir / "*.txt"), "--output", str(out),
                     "--eval-fraction", "0.2", "--chunk-tokens", "100",
                     "--records-per-shard", "7"])
  assert rc == 0, capsys.readouterr().err
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["vocab_size"] == 258 and manifest["split_by"] == "tail"
  assert len(manifest["splits"]["train"]["files"]) > 1  # several shards
  text = _config(source="text", paths=str(text_dir / "*.txt"), eval_fraction=0.2)
  shards = _config(source="arrayrecord", paths=str(out))
  for split in ("train", "eval"):
    assert manifest["splits"][split]["tokens"] == len(data.split_tokens(text, split))
    kw = dict(split=split, seq_len=SEQ, global_batch_size=4, seed=5)
    # Windows crossing record and shard boundaries read back exactly.
    _assert_same(list(data.make_iterator(shards, num_epochs=1, **kw)),
                 list(data.make_iterator(text, num_epochs=1, **kw)))
    assert data.unigram_entropy(shards, split=split) == data.unigram_entropy(text, split=split)
  # Resuming from state works for shards too.
  kw = dict(split="train", seq_len=SEQ, global_batch_size=4, seed=5)
  it = data.make_iterator(shards, **kw)
  _take(it, 3)
  resumed = data.make_iterator(shards, **kw)
  resumed.set_state(it.get_state())
  _assert_same(_take(resumed, 3), _take(it, 3))


def test_prepare_data_tokenizer_mismatch(tmp_path, text_dir):
  out = tmp_path / "shards"
  assert prepare.main(["--input", str(text_dir), "--output", str(out)]) == 0
  path = _write_hf_tokenizer(tmp_path / "tokenizer.json", ["alpha beta"])
  with pytest.raises(ValueError, match=r"^config\.data\.tokenizer: .* is not the tokenizer"):
    data.validate(_config(source="arrayrecord", paths=str(out), tokenizer=str(path)),
                  seq_len=SEQ, global_batch_size=4)


@pytest.mark.parametrize("argv, pattern", [
    (["--output", "{out}"], "the following arguments are required: --input"),
    (["--input", "{tmp}/nope/*.txt", "--output", "{out}"], "--input: no files match"),
    (["--input", "{corpus}", "--output", "{out}", "--eval-fraction", "0"], "--eval-fraction"),
    (["--input", "{corpus}", "--output", "{out}", "--tokenizer", "bpe"], "--tokenizer: unknown"),
    (["--input", "{corpus}", "--output", "{out}", "--split-by", "x"], "--split-by"),
    (["--input", "{corpus}", "--output", "{full}"], "--output: .* is not empty; pass --overwrite"),
    (["--input", "{full}", "--output", "{full}", "--overwrite"], "--output: .* holds input file"),
])
def test_prepare_data_bad_input_exits_2(tmp_path, text_dir, capsys, argv, pattern):
  full = tmp_path / "full"
  full.mkdir()
  (full / "keep.txt").write_text("precious")
  argv = [a.format(tmp=tmp_path, out=tmp_path / "out", corpus=text_dir, full=full) for a in argv]
  assert prepare.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("signflax prepare-data: error: ") and err.count("\n") == 1
  assert __import__("re").search(pattern, err)
  assert not (tmp_path / "out").exists()
  assert (full / "keep.txt").read_text() == "precious"
  assert sorted(os.listdir(tmp_path)) == ["corpus", "full"]  # no temporary left behind


def test_prepare_data_overwrite_replaces(tmp_path, text_dir):
  out = tmp_path / "out"
  out.mkdir()
  (out / "old.txt").write_text("old")
  assert prepare.main(["--input", str(text_dir), "--output", str(out), "--overwrite"]) == 0
  assert not (out / "old.txt").exists() and (out / "manifest.json").is_file()
  assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []
