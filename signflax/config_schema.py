"""Declarative config checks: every field's type, range and allowed values in one table.

A ``Schema`` maps dotted field names to ``Field`` specs and holds cross-field
rules. ``Schema.check(config)`` walks the config once, before any JAX work, and
raises a one-line ``ValueError`` naming the dotted field, its value and what is
allowed::

    config.optimizer.weight_decay: must be a finite number >= 0, got -0.1

Declaring a field (any command, any group)::

    from signflax import config_schema as cs
    SCHEMA.declare("train.gradient_exchange", cs.choice("mean", "sign_vote"))
    SCHEMA.declare("optimizer.decay_fraction", cs.real(0.0, 1.0))
    SCHEMA.declare("data.paths", cs.string())
    SCHEMA.rule(lambda c: None if c.a <= c.b else "config.a: must be <= config.b")

``integer`` accepts ints only (no floats, no bools); ``real`` accepts finite ints
and floats; ``choice`` a value from a fixed set; ``string``/``boolean`` their
type; ``optional=True`` also accepts None. A field the config holds but the
schema does not know (in a group the schema declares) gets a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Iterable, Mapping

Rule = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True)
class Field:
  """One field's type and allowed values; ``check`` returns why a value is bad, or None."""
  kind: str                         # "int" | "real" | "bool" | "str" | "choice" | "any"
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  choices: tuple = ()
  optional: bool = False            # None allowed
  required: bool = True             # False: a config may leave the field out

  def describe(self) -> str:
    if self.kind == "choice":
      text = f"one of {', '.join(map(str, self.choices))}"
    elif self.kind in ("int", "real"):
      text = "an integer" if self.kind == "int" else "a finite number"
      if self.low > -math.inf and self.high < math.inf:
        text += (f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                 f"{')' if self.high_open else ']'}")
      elif self.low > -math.inf:
        text += f" {'>' if self.low_open else '>='} {self.low:g}"
      elif self.high < math.inf:
        text += f" {'<' if self.high_open else '<='} {self.high:g}"
    else:
      text = {"bool": "true or false", "str": "a string", "any": "any value"}[self.kind]
    return text + (" or None" if self.optional else "")

  def check(self, value: Any) -> bool:
    if value is None:
      return self.optional
    if self.kind == "any":
      return True
    if self.kind == "choice":
      return isinstance(value, type(self.choices[0])) and value in self.choices
    if self.kind == "bool":
      return isinstance(value, bool)
    if self.kind == "str":
      return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.kind == "int" and not isinstance(value, int):
      return False
    if not math.isfinite(value):
      return False
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return above and below


def integer(low: float = -math.inf, high: float = math.inf, **flags) -> Field:
  """An int (not a float, not a bool) in [low, high]; flags: optional, required."""
  return Field("int", low, high, **flags)


def real(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
         high_open: bool = False, **flags) -> Field:
  """A finite int or float in the interval (open ends with low_open/high_open)."""
  return Field("real", low, high, low_open, high_open, **flags)


def choice(*values: Any, **flags) -> Field:
  return Field("choice", choices=tuple(values), **flags)


def boolean(**flags) -> Field:
  return Field("bool", **flags)


def string(**flags) -> Field:
  return Field("str", **flags)


def anything(**flags) -> Field:
  return Field("any", **{"optional": True, **flags})


def _suggest(name: str, known: Iterable[str]) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


class Schema:
  """Dotted field name -> ``Field``, plus cross-field rules; see the module docstring."""

  def __init__(self, fields: Mapping[str, Field] | None = None, *, open_groups: Iterable[str] = ()):
    self.fields: dict[str, Field] = dict(fields or {})
    self.rules: list[Rule] = []
    self.open_groups = set(open_groups)   # groups whose unknown fields are not reported

  def declare(self, dotted: str, field: Field) -> None:
    self.fields[dotted] = field

  def rule(self, rule: Rule) -> Rule:
    """Adds a cross-field rule: ``config -> error message or None`` (usable as a decorator)."""
    self.rules.append(rule)
    return rule

  def check(self, config, prefix: str = "config") -> None:
    """Raises a one-line ValueError for the first bad field, then for the first broken rule."""
    for dotted, field in self.fields.items():
      node, missing = config, None
      for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
          missing = part
          break
        node = node[part]
      if missing is not None:
        if not field.required:
          continue
        raise ValueError(f"{prefix}.{dotted}: missing; expected {field.describe()}")
      if not field.check(node):
        if field.kind == "choice":
          raise ValueError(f"{prefix}.{dotted}: {node!r} is not one of "
                           f"{', '.join(map(str, field.choices))}")
        raise ValueError(f"{prefix}.{dotted}: must be {field.describe()}, got {node!r}")
    self._check_unknown(config, prefix)
    for rule in self.rules:
      message = rule(config)
      if message:
        raise ValueError(message)

  def _check_unknown(self, config, prefix: str) -> None:
    groups = {d.rsplit(".", 1)[0] for d in self.fields if "." in d}
    groups.add("")
    for group in sorted(groups - self.open_groups):
      node = config
      for part in filter(None, group.split(".")):
        node = node.get(part) if hasattr(node, "keys") else None
      if node is None:  # a group every field of which may be left out
        continue
      known = {d[len(group) + 1 if group else 0:].split(".")[0] for d in self.fields
               if (d.startswith(group + ".") if group else True)}
      for name in node.keys():
        if name not in known:
          where = f"{prefix}.{group}" if group else prefix
          raise ValueError(f"{where}.{name}: unknown field{_suggest(name, known)}; fields: "
                           f"{', '.join(sorted(known))}")
