"""One declaration per config field: its type, allowed values, default and doc.

Every config group (``config.model``, ``config.train``, the lab's configs, ...) is
a ``Schema`` of ``Field``\\ s declared once, next to the code that reads it. The
default ``ConfigDict`` (``Schema.defaults()``), the validation (``Schema.check``)
and the Markdown reference (``Schema.reference_markdown``, rendered into
``docs/configuration.md`` by ``docs/gen_config_reference.py``) all come from it::

    from signflax import config_schema as cs

    TRAIN = cs.Schema({
        "steps": cs.integer(1, default=400, doc="optimizer steps"),
        "gradient_exchange": cs.choice("mean", "sign_vote", default="mean",
                                       doc="how replicas combine gradients"),
        "compilation_cache_dir": cs.string(optional=True, default=None, doc="..."),
    }, doc="Length, batch, logging and evaluation of a run.")

    @TRAIN.rule
    def _batch_divides(train):            # cross-field rules get the group's node
      if train["global_batch_size"] % train["grad_accum"]:
        return "config.train.global_batch_size: not divisible by ..."

    SCHEMA = cs.Schema({"train": TRAIN, "model": MODEL})   # groups nest (rules too)
    config = SCHEMA.defaults()            # ConfigDict at every default
    SCHEMA.check(config)                  # one-line ValueError naming the field

**Adding a field** is one entry in its group's ``Schema`` (plus the code that uses
it): the default config, the check and the docs follow.

``Schema.check(config)`` walks the config once, before any JAX work, and raises
a one-line ``ValueError`` naming the dotted field, its value and what is allowed::

    config.optimizer.weight_decay: must be a finite number >= 0, got -0.1

``integer`` accepts ints only (no floats, no bools); ``real`` accepts finite ints
and floats; ``choice`` a value from a fixed set; ``names`` a non-empty tuple of such
values; ``string``/``boolean`` their
type; ``anything`` any value. Flags: ``optional=True`` also accepts None;
``required=False`` lets a config leave the field out (give no default then);
``default=`` the value ``defaults()`` puts in; ``doc=`` one line for the
reference. A field the config holds but the schema does not know (in a group
the schema declares) gets a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Iterable, Mapping

Rule = Callable[[Any], "str | None"]


class _Absent:
  """The default of a field that ``defaults()`` leaves out."""

  def __repr__(self) -> str:
    return "ABSENT"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Field:
  """One field's type, allowed values, default and doc; ``check`` says if a value fits."""
  kind: str              # "int" | "real" | "bool" | "str" | "choice" | "names" | "any"
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  choices: tuple = ()
  optional: bool = False            # None allowed
  required: bool = True             # False: a config may leave the field out
  default: Any = ABSENT             # what ``Schema.defaults()`` puts in (ABSENT: nothing)
  doc: str = ""                     # one line for the configuration reference

  def __post_init__(self):
    if self.default is not ABSENT and not self.check(self.default):
      raise ValueError(f"default {self.default!r} is not {self.describe()}")

  def describe(self) -> str:
    if self.kind == "choice":
      text = f"one of {', '.join(map(str, self.choices))}"
    elif self.kind == "names":
      text = f"a non-empty tuple of names from {', '.join(map(str, self.choices))}"
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
    return text + (" or None" if self.optional and self.kind != "any" else "")

  def check(self, value: Any) -> bool:
    if value is None:
      return self.optional
    if self.kind == "any":
      return True
    if self.kind == "choice":
      return isinstance(value, type(self.choices[0])) and value in self.choices
    if self.kind == "names":
      return (isinstance(value, (tuple, list)) and bool(value)
              and all(isinstance(v, str) and v in self.choices for v in value))
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
  """An int (not a float, not a bool) in [low, high]; flags: optional, required, default, doc."""
  return Field("int", low, high, **flags)


def real(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
         high_open: bool = False, **flags) -> Field:
  """A finite int or float in the interval (open ends with low_open/high_open)."""
  return Field("real", low, high, low_open, high_open, **flags)


def choice(*values: Any, **flags) -> Field:
  """One of ``values`` (of the first value's type)."""
  return Field("choice", choices=tuple(values), **flags)


def names(*values: str, **flags) -> Field:
  """A non-empty tuple (or list) of names, each one of ``values``."""
  return Field("names", choices=tuple(values), **flags)


def boolean(**flags) -> Field:
  return Field("bool", **flags)


def string(**flags) -> Field:
  return Field("str", **flags)


def anything(**flags) -> Field:
  return Field("any", **{"optional": True, **flags})


def _suggest(name: str, known: Iterable[str]) -> str:
  close = difflib.get_close_matches(name, list(known), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _node(config, group: str):
  """The node at dotted ``group`` (None if the config lacks it)."""
  for part in filter(None, group.split(".")):
    if not hasattr(config, "keys") or part not in config:
      return None
    config = config[part]
  return config


def _join(group: str, name: str) -> str:
  return f"{group}.{name}" if group and name else group or name


class Schema:
  """Dotted field name -> ``Field``, with group docs and cross-field rules.

  ``fields`` maps names to a ``Field`` or to a nested ``Schema`` (a sub-group:
  its fields, docs and rules are taken over under its name). See the module
  docstring.
  """

  def __init__(self, fields: Mapping[str, "Field | Schema"] | None = None, *, doc: str = "",
               open_groups: Iterable[str] = ()):
    self.fields: dict[str, Field] = {}
    self.groups: dict[str, str] = {"": doc}             # dotted group -> its doc ("" = root)
    self.rules: list[tuple[str, Rule]] = []             # (group the rule reads, rule)
    self.open_groups = set(open_groups)   # groups whose unknown fields are not reported
    for name, field in (fields or {}).items():
      self.declare(name, field)

  def declare(self, dotted: str, field: "Field | Schema") -> None:
    """Adds a field (or a sub-group ``Schema``) under the dotted name."""
    if isinstance(field, Schema):
      for group, doc in field.groups.items():
        self.groups[_join(dotted, group)] = doc
      for name, sub in field.fields.items():
        self.fields[_join(dotted, name)] = sub
      self.rules += [(_join(dotted, group), rule) for group, rule in field.rules]
      self.open_groups |= {_join(dotted, g) for g in field.open_groups}
      return
    group = dotted.rpartition(".")[0]
    parts = group.split(".") if group else []
    for depth in range(1, len(parts) + 1):
      self.groups.setdefault(".".join(parts[:depth]), "")
    self.fields[dotted] = field

  def rule(self, rule: Rule) -> Rule:
    """Adds a cross-field rule: ``group node -> error message or None`` (a decorator too)."""
    self.rules.append(("", rule))
    return rule

  # ------------------------------------------------------------------------- derived

  def defaults(self, group: str = ""):
    """A ``ConfigDict`` of every field at its default (of ``group``, or the whole schema)."""
    import ml_collections  # noqa: PLC0415 - the schema itself needs no ml_collections

    def build(prefix: str):
      out = {}
      for name, field in self.fields.items():
        if name.rpartition(".")[0] == prefix and field.default is not ABSENT:
          out[name.rpartition(".")[2]] = field.default
      for sub in self.groups:
        if sub and sub.rpartition(".")[0] == prefix:
          out[sub.rpartition(".")[2]] = build(sub)
      return ml_collections.ConfigDict(out)

    if group and group not in self.groups:
      raise KeyError(f"no group {group!r}; groups: {', '.join(sorted(filter(None, self.groups)))}")
    return build(group)

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
    for group, rule in self.rules:
      message = rule(_node(config, group))
      if message:
        raise ValueError(message)

  def _check_unknown(self, config, prefix: str) -> None:
    for group in sorted(set(self.groups) - self.open_groups):
      node = _node(config, group)
      if not hasattr(node, "keys"):
        continue  # a missing group: its required fields were reported
      known = {d[len(group) + 1 if group else 0:].split(".")[0]
               for d in [*self.fields, *self.groups] if d and d != group
               and (d.startswith(group + ".") if group else True)}
      for name in node.keys():
        if name not in known:
          where = f"{prefix}.{group}" if group else prefix
          raise ValueError(f"{where}.{name}: unknown field{_suggest(name, known)}; fields: "
                           f"{', '.join(sorted(known))}")

  def reference_markdown(self, prefix: str = "config", level: int = 2,
                         title: str | None = None) -> str:
    """The configuration reference: per group, a table of field, type, allowed values,
    default and doc (Markdown); ``title`` heads the root group's table."""
    type_names = {"int": "int", "real": "float", "bool": "bool", "str": "str", "any": "any",
                  "names": "tuple"}
    sections = []
    for group in self.groups:
      names = [n for n in self.fields if n.rpartition(".")[0] == group]
      if not names:
        continue
      heading = f"`{prefix}.{group}`" if group else (title or f"`{prefix}`")
      lines = [f"{'#' * level} {heading}", ""]
      if self.groups[group]:
        lines += [self.groups[group], ""]
      lines += ["| field | type | allowed | default | doc |", "|---|---|---|---|---|"]
      for name in names:
        field = self.fields[name]
        kind = (type_names[field.kind] if field.kind != "choice"
                else type(field.choices[0]).__name__)
        default = (("required" if field.required else "(absent)") if field.default is ABSENT
                   else f"`{field.default!r}`")
        cells = [f"`{name.rpartition('.')[2]}`", kind, field.describe(), default, field.doc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
      sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def from_dataclass(cls, fields: Mapping[str, Field], *, doc: str = "") -> Schema:
  """A group mirroring dataclass ``cls``: ``fields`` give each field's type, range and
  doc; the defaults are the dataclass's own (so the class stays usable alone). Every
  dataclass field needs an entry, and every entry a dataclass field."""
  names = [f.name for f in dataclasses.fields(cls)]
  if set(names) != set(fields):
    raise ValueError(f"{cls.__name__}: schema fields {sorted(set(fields) ^ set(names))} do "
                     "not match the dataclass fields")
  return Schema({f.name: dataclasses.replace(fields[f.name], default=f.default)
                 for f in dataclasses.fields(cls)}, doc=doc)
