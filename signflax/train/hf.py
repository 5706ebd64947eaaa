"""Hugging Face LLaMA format, both ways: export a run, start a run from a checkpoint.

    signflax export --workdir runs/tiny --format hf --output hf/tiny
    signflax train --config.train.init_from=hf:hf/tiny ...      # fine-tune from it

An export directory holds ``config.json`` (``LlamaConfig``), ``model.safetensors``
(float32), ``generation_config.json`` and the tokenizer: the run's
``tokenizer.json``, or for the byte tokenizer one written here that encodes
every string exactly as ``signflax.data.ByteTokenizer`` does.

The layouts agree except for the kernel orientation:

=================================  =====================================  ===========
signflax parameter                 Hugging Face tensor (layer i)          map
=================================  =====================================  ===========
``embed [V, d]``                   ``model.embed_tokens.weight [V, d]``   as is
``layers/attn/q [L, d, H*dh]``     ``...self_attn.q_proj.weight``         transpose
``layers/attn/{k,v} [L, d, K*dh]`` ``...self_attn.{k,v}_proj.weight``     transpose
``layers/attn/o [L, H*dh, d]``     ``...self_attn.o_proj.weight``         transpose
``layers/mlp/{gate,up,down}``      ``...mlp.{gate,up,down}_proj.weight``  transpose
``layers/{attn,mlp}_norm/scale``   ``...{input,post_attention}_layernorm``  as is
``final_norm/scale``               ``model.norm.weight``                  as is
``lm_head [d, V]`` (untied only)   ``lm_head.weight [V, d]``              transpose
=================================  =====================================  ===========

RoPE: both rotate the pairs ``(x[j], x[j + dh/2])`` (HF's ``rotate_half``) with
frequencies ``theta^(-2j/dh)``, so q/k rows need no permutation (a checkpoint in
Meta's interleaved layout was already permuted by HF's own converter). Query head
``h`` reads key/value head ``h // (H/K)`` in both (GQA). RMSNorm: ``x / sqrt(mean
x^2 + eps) * w`` in float32 in both. The vocabulary keeps signflax's padded rows
(a multiple of 128), so ``config.json``'s ``vocab_size`` is the weights' row count;
the tokenizer's own size is smaller and the padded ids are never produced by it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import struct
import tempfile
from typing import Any

import numpy as np

from signflax import data as data_lib
from signflax import model as model_lib
from signflax.outcomes import BadInput

PREFIX = "hf:"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# signflax block parameter (under layers/) -> HF tensor name after model.layers.{i}.
_BLOCK = {
    ("attn", "q"): "self_attn.q_proj.weight",
    ("attn", "k"): "self_attn.k_proj.weight",
    ("attn", "v"): "self_attn.v_proj.weight",
    ("attn", "o"): "self_attn.o_proj.weight",
    ("mlp", "gate"): "mlp.gate_proj.weight",
    ("mlp", "up"): "mlp.up_proj.weight",
    ("mlp", "down"): "mlp.down_proj.weight",
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
}
_NORMS = ("attn_norm", "mlp_norm")
# Byte tokenizer specials: names an ``HFTokenizer`` maps back to the same ids.
EOS_NAME, BOS_NAME = "<|endoftext|>", "<|begin_of_text|>"


# ---------------------------------------------------------------------------- config


def hf_config(cfg: model_lib.TransformerConfig, tokenizer: data_lib.Tokenizer) -> dict:
  """``config.json`` of a ``LlamaForCausalLM`` with ``cfg``'s shapes and numerics."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
      "head_dim": cfg.qk_dim, "max_position_embeddings": cfg.max_seq_len,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
      "initializer_range": cfg.init_std, "bos_token_id": int(tokenizer.bos_id),
      "eos_token_id": int(tokenizer.eos_id), "pad_token_id": None, "use_cache": True,
      "dtype": "float32", "torch_dtype": "float32",
  }


def _rope(hf: dict) -> tuple[float, str]:
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  return float(theta), kind


def model_fields(hf: dict) -> dict[str, Any]:
  """The ``config.model`` fields of an HF LLaMA ``config.json`` (what to pass to train)."""
  heads = hf["num_attention_heads"]
  return {
      "vocab_size": hf["vocab_size"], "num_layers": hf["num_hidden_layers"],
      "d_model": hf["hidden_size"], "num_heads": heads,
      "num_kv_heads": hf.get("num_key_value_heads") or heads,
      "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
      "mlp_dim": hf["intermediate_size"], "rope_theta": _rope(hf)[0],
      "norm_eps": hf.get("rms_norm_eps", 1e-6),
      "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
  }


def check_config(hf: dict, cfg: model_lib.TransformerConfig, where: str) -> None:
  """Raises BadInput (one line) unless ``hf`` describes a LLaMA that ``cfg`` can hold."""
  architectures = hf.get("architectures") or []
  if hf.get("model_type") != "llama" and "LlamaForCausalLM" not in architectures:
    raise BadInput(f"{where}: not a LLaMA checkpoint (model_type {hf.get('model_type')!r}, "
                   f"architectures {architectures}); allowed: model_type 'llama'")
  unsupported = [f"{k}={hf[k]!r}" for k, v in (("attention_bias", False), ("mlp_bias", False),
                                               ("hidden_act", "silu"))
                 if k in hf and hf[k] != v]
  theta, kind = _rope(hf)
  if kind != "default":
    unsupported.append(f"rope_type={kind!r}")
  if unsupported:
    raise BadInput(f"{where}: {', '.join(unsupported)} is not supported (signflax's LLaMA has "
                   "no biases, SiLU gates and plain RoPE)")
  try:
    fields = model_fields(hf)
  except KeyError as e:
    raise BadInput(f"{where}: config.json lacks {e.args[0]!r}") from None
  ours = {"vocab_size": cfg.vocab_size, "num_layers": cfg.num_layers, "d_model": cfg.d_model,
          "num_heads": cfg.num_heads, "num_kv_heads": cfg.kv_heads, "head_dim": cfg.qk_dim,
          "mlp_dim": cfg.hidden_dim, "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps,
          "tie_embeddings": cfg.tie_embeddings}
  differ = [name for name in ours if fields[name] != ours[name]]
  if differ:
    name = differ[0]
    raise BadInput(f"config.model.{name}: {ours[name]!r} disagrees with {where} "
                   f"({fields[name]!r}); set " + " ".join(
                       f"--config.model.{n}={fields[n]!r}" for n in differ))


# ---------------------------------------------------------------------------- tensors


def hf_layout(cfg: model_lib.TransformerConfig) -> dict[str, tuple[int, ...]]:
  """``{HF tensor name: shape}`` of the LLaMA that ``cfg`` describes."""
  d, h, q, kv = cfg.d_model, cfg.hidden_dim, cfg.num_heads * cfg.qk_dim, cfg.kv_heads * cfg.qk_dim
  block = {"self_attn.q_proj.weight": (q, d), "self_attn.k_proj.weight": (kv, d),
           "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, q),
           "mlp.gate_proj.weight": (h, d), "mlp.up_proj.weight": (h, d),
           "mlp.down_proj.weight": (d, h), "input_layernorm.weight": (d,),
           "post_attention_layernorm.weight": (d,)}
  layout = {"model.embed_tokens.weight": (cfg.vocab_size, d), "model.norm.weight": (d,)}
  for i in range(cfg.num_layers):
    layout.update({f"model.layers.{i}.{name}": shape for name, shape in block.items()})
  if not cfg.tie_embeddings:
    layout["lm_head.weight"] = (cfg.vocab_size, d)
  return layout


def to_hf(params: Any) -> dict[str, np.ndarray]:
  """signflax parameters -> HF tensors (float32 numpy, kernels ``[out, in]``)."""
  f32 = lambda x: np.asarray(x, np.float32)
  tensors = {"model.embed_tokens.weight": f32(params["embed"]),
             "model.norm.weight": f32(params["final_norm"]["scale"])}
  layers = params["layers"]
  for (module, leaf), name in _BLOCK.items():
    stacked = f32(layers[module][leaf])
    for i, value in enumerate(stacked):
      tensors[f"model.layers.{i}.{name}"] = np.ascontiguousarray(
          value if module in _NORMS else value.T)
  if "lm_head" in params:
    tensors["lm_head.weight"] = np.ascontiguousarray(f32(params["lm_head"]).T)
  return tensors


def from_hf(tensors: dict[str, np.ndarray], cfg: model_lib.TransformerConfig) -> dict:
  """HF tensors -> signflax parameters (float32 numpy) for ``cfg``; tensors as ``check_tensors``
  accepted them."""
  f32 = lambda x: np.asarray(x, np.float32)
  layers: dict = {}
  for (module, leaf), name in _BLOCK.items():
    per_layer = [f32(tensors[f"model.layers.{i}.{name}"]) for i in range(cfg.num_layers)]
    layers.setdefault(module, {})[leaf] = np.stack(
        per_layer if module in _NORMS else [x.T for x in per_layer])
  params = {"embed": f32(tensors["model.embed_tokens.weight"]), "layers": layers,
            "final_norm": {"scale": f32(tensors["model.norm.weight"])}}
  if not cfg.tie_embeddings:
    params["lm_head"] = np.ascontiguousarray(f32(tensors["lm_head.weight"]).T)
  return params


def check_tensors(shapes: dict[str, tuple[int, ...]], cfg: model_lib.TransformerConfig,
                  where: str) -> None:
  """Raises BadInput unless the HF tensors ``{name: shape}`` are exactly ``cfg``'s."""
  expected = hf_layout(cfg)
  extra = [n for n in shapes if n not in expected and not n.endswith("rotary_emb.inv_freq")]
  if cfg.tie_embeddings and "lm_head.weight" in extra:
    extra.remove("lm_head.weight")   # some writers store the tied head too: checked on load
  missing = [n for n in expected if n not in shapes]
  wrong = [f"{n} {list(shapes[n])} (config wants {list(s)})"
           for n, s in expected.items() if n in shapes and tuple(shapes[n]) != s]
  for label, names in (("missing tensor(s)", missing), ("unexpected tensor(s)", extra),
                       ("tensor shape(s) disagree with the config", wrong)):
    if names:
      more = f" and {len(names) - 3} more" if len(names) > 3 else ""
      raise BadInput(f"{where}: {label}: {', '.join(names[:3])}{more}")


# ---------------------------------------------------------------------------- files


def _hf_dir(spec: str, field: str) -> pathlib.Path:
  path = pathlib.Path(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec).expanduser()
  if not path.is_dir():
    raise BadInput(f"{field}: {str(path)!r} is not a directory (expected a Hugging Face "
                   "model directory with config.json and model.safetensors)")
  return path


def read_config(path: pathlib.Path, field: str) -> dict:
  try:
    hf = json.loads((path / "config.json").read_text())
  except FileNotFoundError:
    raise BadInput(f"{field}: no config.json in {str(path)!r}") from None
  except ValueError as e:
    raise BadInput(f"{field}: {str(path / 'config.json')!r} is not JSON ({e})") from None
  if not isinstance(hf, dict):
    raise BadInput(f"{field}: {str(path / 'config.json')!r} is not a JSON object")
  return hf


def _weight_files(path: pathlib.Path, field: str) -> list[pathlib.Path]:
  if (path / WEIGHTS).is_file():
    return [path / WEIGHTS]
  if (path / INDEX).is_file():
    try:
      weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise BadInput(f"{field}: {str(path / INDEX)!r} is unreadable ({e})") from None
    files = [path / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
      raise BadInput(f"{field}: shard(s) {', '.join(missing[:3])} listed in {INDEX} are missing")
    return files
  raise BadInput(f"{field}: no {WEIGHTS} (or {INDEX}) in {str(path)!r}; only safetensors "
                 "checkpoints are read")


def _header(file: pathlib.Path, field: str) -> dict:
  """A safetensors file's header: ``{name: {"dtype", "shape", "data_offsets"}}``."""
  try:
    with open(file, "rb") as f:
      (size,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(size))
  except (OSError, ValueError, struct.error) as e:
    raise BadInput(f"{field}: {str(file)!r} is not a safetensors file ({e})") from None
  header.pop("__metadata__", None)
  return header


def tensor_shapes(path: pathlib.Path, field: str) -> dict[str, tuple[int, ...]]:
  """``{name: shape}`` of every tensor, from the headers alone (no weights read)."""
  return {name: tuple(info["shape"]) for file in _weight_files(path, field)
          for name, info in _header(file, field).items()}


def check_dir(spec: str, cfg: model_lib.TransformerConfig,
              field: str = "config.train.init_from") -> pathlib.Path:
  """Checks an ``hf:PATH`` against ``cfg`` (config.json and tensor headers); returns PATH."""
  if not isinstance(spec, str) or not spec.startswith(PREFIX):
    raise BadInput(f"{field}: expected '' (none) or 'hf:PATH' (a Hugging Face LLaMA "
                   f"directory), got {spec!r}")
  path = _hf_dir(spec, field)
  check_config(read_config(path, field), cfg, f"{field}={spec!r}")
  check_tensors(tensor_shapes(path, field), cfg, f"{field}={spec!r}")
  return path


def load_params(spec: str, cfg: model_lib.TransformerConfig,
                field: str = "config.train.init_from") -> dict:
  """The signflax parameters (float32 numpy) of the HF LLaMA at ``hf:PATH`` or PATH."""
  path = check_dir(spec if spec.startswith(PREFIX) else PREFIX + spec, cfg, field)
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  tensors = {}
  for file in _weight_files(path, field):
    tensors.update(load_file(file))
  if cfg.tie_embeddings and "lm_head.weight" in tensors and not np.array_equal(
      np.asarray(tensors["lm_head.weight"], np.float32),
      np.asarray(tensors["model.embed_tokens.weight"], np.float32)):
    raise BadInput(f"{field}: lm_head.weight differs from the embedding but "
                   "config.model.tie_embeddings is True; set it to False")
  return from_hf(tensors, cfg)


# ---------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (what the ``ByteLevel`` pre-tokenizer emits)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def byte_tokenizer_json() -> str:
  """A ``tokenizer.json`` that encodes every string to its UTF-8 bytes as ids 0..255.

  A ``ByteLevel`` pre-tokenizer (no regex split, no prefix space) turns each byte
  into one character, and a BPE model with those 256 characters as its vocabulary
  (id = byte value) and no merges maps each to its byte. EOS (256) and BOS (257)
  are vocabulary entries, not added tokens, so text that spells ``<|endoftext|>``
  encodes as its bytes, exactly as in signflax (an added token would be matched).
  """
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
  vocab.update({EOS_NAME: data_lib.ByteTokenizer.eos_id, BOS_NAME: data_lib.ByteTokenizer.bos_id})
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return tok.to_str()


def _write_tokenizer(tokenizer, spec: str, cfg, out: pathlib.Path) -> None:
  tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast",
                      "model_max_length": cfg.max_seq_len, "clean_up_tokenization_spaces": False}
  if spec == "byte":
    # No eos_token/bos_token here: transformers would register them as added tokens and
    # match their text; config.json and generation_config.json carry their ids.
    (out / "tokenizer.json").write_text(byte_tokenizer_json())
  else:
    shutil.copyfile(os.path.expanduser(spec), out / "tokenizer.json")
    inner = getattr(tokenizer, "_tok", None)
    if inner is not None:
      for key, token_id in (("eos_token", tokenizer.eos_id), ("bos_token", tokenizer.bos_id)):
        name = inner.id_to_token(token_id)
        if name is not None:
          tokenizer_config[key] = name
  (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


# ---------------------------------------------------------------------------- export


def check_output(output: str | pathlib.Path) -> pathlib.Path:
  """``output`` as a path, or BadInput unless it is new or an empty directory."""
  out = pathlib.Path(output).expanduser()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise BadInput(f"--output: {str(out)!r} exists and is not an empty directory")
  if not out.parent.is_dir():
    raise BadInput(f"--output: {str(out.parent)!r} is not a directory")
  return out


def write(params: Any, cfg: model_lib.TransformerConfig, tokenizer, tokenizer_spec: str,
          output: str | pathlib.Path) -> pathlib.Path:
  """Writes an HF LLaMA directory at ``output`` (built beside it, renamed into place)."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  out = check_output(output)
  tensors = to_hf(params)
  check_tensors({k: v.shape for k, v in tensors.items()}, cfg, "parameters")
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
  try:
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tokenizer), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": int(tokenizer.bos_id), "eos_token_id": int(tokenizer.eos_id)},
        indent=2) + "\n")
    _write_tokenizer(tokenizer, tokenizer_spec, cfg, tmp)
    os.chmod(tmp, 0o777 & ~_umask())
    if out.exists():
      out.rmdir()
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def export(workdir: str, step: int | None, output: str) -> str:
  """``signflax export --format hf``: the run's parameters at ``step`` as an HF directory."""
  from signflax.train import trained  # pylint: disable=import-outside-toplevel
  from signflax.train import checkpoint  # pylint: disable=import-outside-toplevel
  check_output(output)
  config = trained.run_config(workdir)
  cfg = trained.model_config(config)
  try:
    tokenizer = data_lib.build_tokenizer(config.data)
    params, step = checkpoint.read_params(workdir, step)
  except ValueError as e:
    raise BadInput(trained._argument_names(str(e))) from e  # pylint: disable=protected-access
  out = write(params, cfg, tokenizer, config.data.tokenizer, output)
  count = sum(np.asarray(x).size for x in _leaves(params))
  return (f"wrote a LlamaForCausalLM ({count / 1e6:.2f}M parameters, vocab {cfg.vocab_size}) "
          f"from step {step if step is not None else '?'} to {out}")


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree
