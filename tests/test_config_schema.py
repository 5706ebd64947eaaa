"""One declaration per config field: defaults, checks and the reference come from it."""

import importlib.util
import pathlib

import ml_collections
import pytest

from signflax import config_schema as cs
from signflax.train import schema

REPO = pathlib.Path(__file__).resolve().parent.parent


def _generator():
  spec = importlib.util.spec_from_file_location("gen_config_reference",
                                                REPO / "docs" / "gen_config_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_configuration_reference_is_current():
  gen = _generator()
  assert gen.TARGET.read_text() == gen.render(), (
      "docs/configuration.md is stale: run python docs/gen_config_reference.py")


def test_reference_names_every_field_with_its_default():
  text = _generator().render()
  for dotted, field in schema.SCHEMA.fields.items():
    group, _, name = dotted.rpartition(".")
    section = text.split(f"## `config.{group}`\n", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
    assert f"`{field.default!r}`" in row and field.describe() in row


def test_one_declaration_gives_default_check_and_doc():
  group = cs.Schema({
      "steps": cs.integer(1, default=10, doc="how many"),
      "mode": cs.choice("a", "b", default="a", doc="which"),
      "sub": cs.Schema({"rate": cs.real(0, 1, default=0.5, doc="a share")}, doc="Nested."),
  }, doc="A group.")
  both = cs.Schema({"g": group})
  config = both.defaults()
  assert config.to_dict() == {"g": {"steps": 10, "mode": "a", "sub": {"rate": 0.5}}}
  both.check(config)
  config.g.sub.rate = 2.0
  with pytest.raises(ValueError, match=r"^config\.g\.sub\.rate: must be a finite number in "
                                       r"\[0, 1\], got 2\.0$"):
    both.check(config)
  config.g.sub.rate, config.g.mode = 0.5, "c"
  with pytest.raises(ValueError, match=r"^config\.g\.mode: 'c' is not one of a, b$"):
    both.check(config)
  config.g.mode = "a"
  config.g.sub.rat = 0.1
  with pytest.raises(ValueError, match=r"config\.g\.sub\.rat: unknown field \(did you mean "
                                       r"'rate'\?\)"):
    both.check(config)
  text = both.reference_markdown()
  assert "## `config.g.sub`\n\nNested." in text
  assert "| `steps` | int | an integer >= 1 | `10` | how many |" in text


def test_group_rules_read_their_group_after_nesting():
  group = cs.Schema({"low": cs.integer(default=1), "high": cs.integer(default=2)})

  @group.rule
  def _ordered(g):
    return None if g["low"] <= g["high"] else "config.r.low: must be <= config.r.high"

  outer = cs.Schema({"r": group})
  config = outer.defaults()
  outer.check(config)
  config.r.low = 5
  with pytest.raises(ValueError, match="must be <= config.r.high"):
    outer.check(config)


def test_a_default_outside_the_allowed_values_is_refused_at_declaration():
  with pytest.raises(ValueError, match="default -1 is not an integer >= 0"):
    cs.integer(0, default=-1)


def test_train_defaults_are_the_declared_ones_and_valid():
  config = schema.default_config()
  assert isinstance(config, ml_collections.ConfigDict)
  schema.SCHEMA.check(config)
  assert config.train.steps == 400 and config.optimizer.muon.ns_dtype == "auto"
  assert config.checkpoint.retry_max_delay_s == 30.0
  assert set(config.keys()) == set(schema.GROUPS)
