"""The layer map of docs/architecture.md, checked against the imports of every module.

The map lives here, between the ``layers`` markers; docs/architecture.md shows this very
text. Imports are read with ``ast`` (nothing is imported), including imports inside
functions, so a lazy import that points up the map fails too.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "signflax"

# --8<-- [start:layers]
# Which component each module belongs to. "pkg.*" matches pkg and every module under it;
# a name without ".*" matches that module alone; the longest match wins.
COMPONENTS = {
    "signflax.cli": "cli",
    "signflax.configs.*": "configs",
    "signflax.experiments.sweep": "lm_experiments",
    "signflax.experiments.fits": "lm_experiments",
    "signflax.experiments.fault_sweep": "lm_experiments",
    "signflax.experiments.linreg": "lab",
    "signflax.experiments.compute_optimal": "lab",
    "signflax.tpu.*": "tpu",
    "signflax.train.*": "train",
    "signflax.metric_writers": "metric_writers",
    "signflax.tensorboard_extras": "metric_writers",
    "signflax.data.*": "data",
    "signflax.model.*": "model",
    "signflax.linreg.*": "linreg",
    "signflax.parallel.*": "parallel",
    "signflax.optim.*": "optim",
    "signflax.config_io": "foundation",
    "signflax.config_schema": "foundation",
    "signflax.outcomes": "foundation",
    "signflax.storage": "foundation",
    # packages whose __init__ holds a docstring only
    "signflax": "namespace",
    "signflax.experiments": "namespace",
}

# The components each component may import (besides itself and "namespace"), top to
# bottom. Nothing may import "cli"; the lab never reaches "train", "data" or "model".
# "optim" imports nothing of signflax: library users need only jax, numpy and optax.
ALLOWED = {
    "cli": {"configs", "lm_experiments", "lab", "tpu", "train", "metric_writers", "data",
            "model", "linreg", "parallel", "optim", "foundation"},
    "configs": {"lm_experiments", "lab", "train", "foundation"},
    "lm_experiments": {"train", "metric_writers", "data", "model", "parallel", "optim",
                       "foundation"},
    "lab": {"linreg", "metric_writers", "parallel", "optim", "foundation"},
    "tpu": {"train", "data", "model", "parallel", "optim", "foundation"},
    "train": {"metric_writers", "data", "model", "parallel", "optim", "foundation"},
    "metric_writers": {"foundation"},
    "data": {"foundation"},
    "model": {"parallel", "foundation"},
    "linreg": {"parallel", "optim", "foundation"},
    "parallel": {"optim", "foundation"},
    "optim": set(),
    "foundation": set(),
    "namespace": set(),
}
# --8<-- [end:layers]

# Modules cli.py imports by name through importlib (its command tables).
CLI = "signflax.cli"


def module_files() -> dict[str, pathlib.Path]:
  """Every module under signflax/ (configs included: they are Python files too)."""
  modules = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    modules[".".join(parts)] = path
  return modules


def component_of(module: str) -> str | None:
  best, best_len = None, -1
  for pattern, component in COMPONENTS.items():
    if pattern.endswith(".*"):
      prefix = pattern[:-2]
      hit = module == prefix or module.startswith(prefix + ".")
      length = len(prefix)
    else:
      hit, length = module == pattern, len(pattern)
    if hit and length > best_len:
      best, best_len = component, length
  return best


def imports_of(module: str, path: pathlib.Path, modules: dict) -> set[str]:
  """The signflax modules that ``module`` imports (``from pkg import mod`` names mod)."""
  is_package = path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
      else:
        base = node.module
      for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.add(candidate if candidate in modules else base)
    elif module == CLI and isinstance(node, ast.Constant) and isinstance(node.value, str):
      if node.value in modules and node.value.startswith("signflax."):
        found.add(node.value)
  return {name for name in found if name.split(".")[0] == "signflax"} - {module}


@pytest.fixture(scope="module")
def graph():
  modules = module_files()
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_is_on_the_map():
  missing = [name for name in module_files() if component_of(name) is None]
  assert not missing, (f"modules missing from the layer map (COMPONENTS in "
                       f"tests/test_architecture.py, shown in docs/architecture.md): {missing}")


def test_every_component_has_its_edges():
  assert set(COMPONENTS.values()) == set(ALLOWED)
  for targets in ALLOWED.values():
    assert targets <= set(ALLOWED)


def test_imports_point_down_the_map(graph):
  bad = []
  for module, targets in sorted(graph.items()):
    source = component_of(module)
    for target in sorted(targets):
      dest = component_of(target)
      if dest is None:
        bad.append(f"{module} imports {target}, which no module defines")
      elif dest not in ALLOWED[source] | {source, "namespace"}:
        bad.append(f"{module} ({source}) imports {target} ({dest})")
  assert not bad, "imports that point up the layer map:\n  " + "\n  ".join(bad)


def test_the_map_is_a_layering():
  """No cycle among components: the map can be drawn top to bottom."""
  order, state = [], {}

  def visit(component, trail):
    if state.get(component) == "done":
      return
    assert state.get(component) != "open", f"cycle in ALLOWED: {trail + [component]}"
    state[component] = "open"
    for target in ALLOWED[component]:
      visit(target, trail + [component])
    state[component] = "done"
    order.append(component)

  for component in ALLOWED:
    visit(component, [])
  assert len(order) == len(ALLOWED)


def test_nothing_imports_the_cli(graph):
  assert "cli" not in set().union(*ALLOWED.values())
  importers = [module for module, targets in graph.items() if CLI in targets]
  assert not importers, f"{importers} import {CLI}; config loading lives in signflax.config_io"
  outside, modules = [], module_files()
  for folder in ("benchmarks", "examples"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      if CLI in imports_of(f"{folder}.{path.stem}", path, modules):
        outside.append(str(path.relative_to(ROOT)))
  assert not outside, f"{outside} import {CLI}; use signflax.config_io"


def test_the_lab_never_reaches_the_trainer(graph):
  """Transitively, through any chain of imports, not only the direct ones."""
  lab = [module for module in graph if component_of(module) == "lab"]
  assert lab
  reached, todo = set(), list(lab)
  while todo:
    for target in graph.get(todo.pop(), ()):
      if target not in reached:
        reached.add(target)
        todo.append(target)
  forbidden = sorted(m for m in reached if component_of(m) in {"train", "lm_experiments",
                                                                "data", "model"})
  assert not forbidden, f"the lab reaches {forbidden}"


def test_optim_needs_only_jax_numpy_optax():
  allowed_roots = {"jax", "numpy", "optax", "signflax", "__future__"}
  stdlib = set(sys.stdlib_module_names)
  bad = []
  for path in sorted((PACKAGE / "optim").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module]
      for name in names:
        root = name.split(".")[0]
        if root not in allowed_roots and root not in stdlib:
          bad.append(f"{path.relative_to(ROOT)}: {name}")
  assert not bad, bad


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
  """The checks above could pass vacuously if imports_of missed a form of import."""
  source = tmp_path / "mod.py"
  source.write_text("import signflax.optim\n"
                    "from signflax import storage\n"
                    "from . import sibling\n"
                    "def f():\n  from signflax.train import trainer\n")
  modules = {"signflax.train.trainer": None, "signflax.storage": None,
             "signflax.data.sibling": None}
  assert imports_of("signflax.data.mod", source, modules) == {
      "signflax.optim", "signflax.storage", "signflax.data.sibling", "signflax.train.trainer"}
  other = tmp_path / "bench.py"
  other.write_text("from signflax import cli\n")
  assert imports_of("benchmarks.bench", other, module_files()) == {CLI}
  assert component_of("signflax.train.new_module") == "train"
  assert component_of("signflax.experiments.new_experiment") is None
  assert component_of("signflax.new_top_level") is None
