"""signflax.data: Grain input pipelines for language-model training.

Sources (``config.data.source``): ``stdlib`` (the running Python's standard
library, the built-in default corpus), ``text`` (local files) and
``arrayrecord`` (shards written by ``signflax prepare-data``). Tokenizers:
byte-level (default) or a Hugging Face ``tokenizer.json``. Token streams are
packed into ``seq_len + 1`` windows, shuffled with the seed, batched, and each
process reads only its share; iterators are checkpointable.

  data_config = default_data_config()
  validate(data_config, seq_len=256, global_batch_size=32)
  tok = build_tokenizer(data_config)
  it = make_iterator(data_config, split="train", seq_len=256, global_batch_size=32, seed=0)
  batch = next(it)            # {"inputs": int32[32, 256], "targets": int32[32, 256]}
  state = it.get_state()      # ... later: it.set_state(state)
  baseline = unigram_entropy(data_config, split="eval")   # nats/token
"""

from signflax.data.pipeline import build_tokenizer
from signflax.data.pipeline import default_data_config
from signflax.data.pipeline import describe
from signflax.data.pipeline import entropy
from signflax.data.pipeline import make_iterator
from signflax.data.pipeline import SOURCES
from signflax.data.pipeline import split_num_tokens
from signflax.data.pipeline import split_tokens
from signflax.data.pipeline import unigram_counts
from signflax.data.pipeline import unigram_entropy
from signflax.data.pipeline import validate
from signflax.data.tokenizer import ByteTokenizer
from signflax.data.tokenizer import HFTokenizer
from signflax.data.tokenizer import Tokenizer

__all__ = [
    "ByteTokenizer", "HFTokenizer", "SOURCES", "Tokenizer", "build_tokenizer",
    "default_data_config", "describe", "entropy", "make_iterator", "split_num_tokens",
    "split_tokens",
    "unigram_counts", "unigram_entropy", "validate",
]
