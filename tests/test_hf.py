"""Hugging Face LLaMA export and import, checked against transformers' LlamaForCausalLM
(torch on CPU; the `hf` extra)."""

import json
import pathlib

import jax
import numpy as np
import pytest

from signflax import cli
from signflax import data as data_lib
from signflax import model as model_lib
from signflax.data import pipeline
from signflax.model import decode
from signflax.train import hf, trained
from tests.test_sample_eval import TRAIN_ARGS, shared_trained_run

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  return shared_trained_run(tmp_path_factory)


def _hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def _hf_greedy(model, prompt, n, eos_id) -> np.ndarray:
  with torch.no_grad():
    out = model.generate(torch.tensor(prompt[None], dtype=torch.long), max_new_tokens=n,
                         do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id)
  return out[0, len(prompt):].numpy()


def _our_greedy(graphdef, params, prompt, n, eos_id) -> np.ndarray:
  out = jax.jit(lambda p, x: decode.generate(graphdef, p, x, jax.random.key(0), max_new_tokens=n,
                                             eos_id=eos_id))(params, prompt[None])
  return np.asarray(out.tokens[0, :int(out.num_steps)])


def _check_same_greedy(ours, theirs, eos_id, n=32):
  # transformers stops at EOS (and pads nothing for one row): compare up to it.
  assert len(theirs) == n or theirs[-1] == eos_id
  np.testing.assert_array_equal(ours[:len(theirs)], theirs)


@pytest.mark.slow
def test_export_loads_in_transformers_with_the_same_logits(trained_run, tmp_path, capsys):
  out = tmp_path / "hf"
  assert cli.main(["export", "--workdir", str(trained_run), "--format", "hf",
                   "--output", str(out)]) == 0
  assert "LlamaForCausalLM" in capsys.readouterr().out
  run = trained.load(trained_run)
  params = jax.device_get(run.params)
  config = json.loads((out / "config.json").read_text())
  tensors = safetensors_numpy.load_file(out / "model.safetensors")
  assert config["vocab_size"] == tensors["model.embed_tokens.weight"].shape[0] == 384
  assert config["tie_word_embeddings"] and "lm_head.weight" not in tensors
  assert (config["num_key_value_heads"], config["num_attention_heads"]) == (2, 4)

  model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  text = pipeline.split_tokens(run.config.data, "eval")[:2 * 64].reshape(2, 64).astype(np.int32)
  ours = np.asarray(model_lib.apply(run.graphdef, params, text))
  assert np.abs(ours - _hf_logits(model, text)).max() <= 1e-4

  prompt = np.concatenate([[256], np.frombuffer(b"class ", np.uint8)]).astype(np.int32)
  _check_same_greedy(_our_greedy(run.graphdef, params, prompt, 32, 256),
                     _hf_greedy(model, prompt, 32, 256), 256)

  # The tokenizer encodes exactly as signflax's byte tokenizer, special-looking text included.
  tricky = "héllo wörld\n\t  <|endoftext|> 😀 \x00 \u2581x"
  auto = transformers.AutoTokenizer.from_pretrained(out)
  assert auto(tricky, add_special_tokens=False)["input_ids"] == list(tricky.encode())
  assert auto(tricky)["input_ids"] == list(tricky.encode())
  loaded = data_lib.HFTokenizer(str(out / "tokenizer.json"))
  assert (loaded.vocab_size, loaded.eos_id, loaded.bos_id) == (258, 256, 257)
  assert list(loaded.encode(tricky)) == list(data_lib.ByteTokenizer().encode(tricky))
  assert loaded.decode(loaded.encode(tricky)) == tricky


def _random_llama(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict]:
  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
      rms_norm_eps=1e-5, rope_theta=50_000.0, tie_word_embeddings=False,
      bos_token_id=257, eos_token_id=256, initializer_range=0.1)
  model = transformers.LlamaForCausalLM(config).eval()
  path = tmp_path / "random_llama"
  model.save_pretrained(path)
  return path, json.loads((path / "config.json").read_text())


def test_import_of_a_random_transformers_llama(tmp_path):
  path, config = _random_llama(tmp_path)
  fields = hf.model_fields(config)
  assert fields["rope_theta"] == 50_000.0 and not fields["tie_embeddings"]
  cfg = model_lib.TransformerConfig(**fields, max_seq_len=128)
  graphdef, _, _ = model_lib.abstract_model(cfg)
  params = hf.load_params("hf:" + str(path), cfg)
  model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  tokens = np.random.RandomState(0).randint(0, 384, (2, 48)).astype(np.int32)
  assert np.abs(np.asarray(model_lib.apply(graphdef, params, tokens))
                - _hf_logits(model, tokens)).max() <= 1e-4
  prompt = tokens[0, :9]
  ours = _our_greedy(graphdef, params, prompt, 32, 256)
  _check_same_greedy(ours, _hf_greedy(model, prompt, 32, 256), 256)
  assert len(np.unique(ours)) > 3

  # HF -> signflax -> HF is bit-exact in float32.
  again = hf.write(params, cfg, data_lib.ByteTokenizer(), "byte", tmp_path / "again")
  original = safetensors_numpy.load_file(path / "model.safetensors")
  written = safetensors_numpy.load_file(again / "model.safetensors")
  assert sorted(original) == sorted(written)
  for name, value in original.items():
    assert value.dtype == written[name].dtype == np.float32
    np.testing.assert_array_equal(value.view(np.uint32), written[name].view(np.uint32), name)
  assert hf.model_fields(json.loads((again / "config.json").read_text())) == fields


@pytest.mark.slow
def test_train_starts_from_a_transformers_checkpoint(tmp_path, capsys):
  path, config = _random_llama(tmp_path)
  capsys.readouterr()
  fields = {k: v for k, v in hf.model_fields(config).items() if k != "vocab_size"}
  overrides = [a for a in TRAIN_ARGS if not a.startswith("--config.model.")]
  overrides += [f"--config.model.{k}={v}" for k, v in fields.items()]
  workdir = tmp_path / "run"
  assert cli.main(["train", "--workdir", str(workdir), *overrides,
                   "--config.train.steps=2", "--config.train.eval_batches=1",
                   "--config.optimizer.warmup_steps=1",
                   f"--config.train.init_from=hf:{path}"]) == 0
  assert f"initialized from hf:{path}" in capsys.readouterr().err
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  # the step-0 eval loss is the torch model's loss on the same eval windows
  run_config = trained.run_config(workdir)
  windows = pipeline.split_tokens(run_config.data, "eval")[:8 * 64 + 1].astype(np.int64)
  inputs = np.stack([windows[i * 64:(i + 1) * 64] for i in range(8)])
  targets = np.stack([windows[i * 64 + 1:(i + 1) * 64 + 1] for i in range(8)])
  model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  logits = torch.tensor(_hf_logits(model, inputs))
  torch_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 384),
                                                 torch.tensor(targets).reshape(-1)).item()
  assert first["step"] == 0 and abs(first["eval_loss"] - torch_loss) <= 1e-4


def _write_config(path: pathlib.Path, **changes):
  config = json.loads((path / "config.json").read_text())
  config.update(changes)
  (path / "config.json").write_text(json.dumps(config))


def test_bad_hf_inputs(tmp_path, capsys):
  path, config = _random_llama(tmp_path)
  capsys.readouterr()   # transformers' progress bars
  base = [a for a in TRAIN_ARGS if not a.startswith("--config.model.")]
  base += [f"--config.model.{k}={v}" for k, v in hf.model_fields(config).items()
           if k != "vocab_size"]
  not_llama = tmp_path / "gpt2"
  not_llama.mkdir()
  (not_llama / "config.json").write_text(json.dumps({"model_type": "gpt2",
                                                     "architectures": ["GPT2LMHeadModel"]}))
  scaled = tmp_path / "scaled"
  scaled.mkdir()
  (scaled / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
  (scaled / "config.json").write_text((path / "config.json").read_text())
  _write_config(scaled, rope_parameters={"rope_type": "llama3", "rope_theta": 50_000.0})
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text((path / "config.json").read_text())
  tensors = safetensors_numpy.load_file(path / "model.safetensors")
  tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:8]
  safetensors_numpy.save_file(tensors, broken / "model.safetensors")
  cases = [
      (f"hf:{tmp_path / 'absent'}", [], "is not a directory"),
      (str(path), [], "expected '' (none) or 'hf:PATH'"),
      (f"hf:{not_llama}", [], "not a LLaMA checkpoint (model_type 'gpt2'"),
      (f"hf:{scaled}", [], "rope_type='llama3' is not supported"),
      (f"hf:{path}", ["--config.model.d_model=32", "--config.model.head_dim=8"],
       "config.model.d_model: 32 disagrees with"),
      (f"hf:{path}", ["--config.model.tie_embeddings=True"], "config.model.tie_embeddings"),
      (f"hf:{broken}", [], "tensor shape(s) disagree with the config: "
                           "model.layers.1.mlp.up_proj.weight [8, 64] (config wants [160, 64])"),
  ]
  for spec, extra, message in cases:
    code = cli.main(["train", "--workdir", str(tmp_path / "never"), *base, *extra,
                     f"--config.train.init_from={spec}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, (spec, err)
    assert not (tmp_path / "never").exists()
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  code = cli.main(["export", "--workdir", str(tmp_path), "--format", "hf",
                   "--output", str(tmp_path / "full")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "--output:" in err and "not an empty directory" in err
