"""The docs site: every public symbol of signflax.optim is documented and rendered, and
``mkdocs build --strict`` passes (no broken link, anchor or nav entry)."""

import ast
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import signflax.optim as sfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPTIM_PAGE = ROOT / "docs" / "api" / "optim.md"
DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def public_names() -> list[str]:
  return list(sfo.__all__)


def attribute_docstrings(package_dir: pathlib.Path) -> dict[str, str]:
  """Module-level ``NAME = ...`` followed by a string literal: the attribute's docstring
  (what mkdocstrings renders for a constant), for every module of the package."""
  found = {}
  for path in sorted(package_dir.glob("*.py")):
    body = ast.parse(path.read_text()).body
    for node, after in zip(body, body[1:]):
      targets = (node.targets if isinstance(node, ast.Assign)
                 else [node.target] if isinstance(node, ast.AnnAssign) else [])
      if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
          and isinstance(after.value.value, str)):
        for target in targets:
          if isinstance(target, ast.Name):
            found[target.id] = after.value.value
  return found


def own_docstring(obj) -> str:
  """The docstring written for ``obj``; a NamedTuple's generated ``Name(a, b)`` and a
  builtin type's docstring (a dict constant's ``dict() -> ...``) do not count."""
  if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)
          or callable(obj)) or isinstance(obj, (dict, list, tuple, str, int, float)):
    return ""
  doc = obj.__doc__ or ""
  if inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
    if doc.strip() == f"{obj.__name__}({', '.join(obj._fields)})":
      return ""
  return doc.strip()


def test_all_lists_every_public_name():
  bound = {name for name in dir(sfo) if not name.startswith("_")
           and not isinstance(getattr(sfo, name), types.ModuleType)}
  assert bound == set(sfo.__all__), (
      f"in signflax.optim but not in __all__: {sorted(bound - set(sfo.__all__))}; "
      f"in __all__ but not bound: {sorted(set(sfo.__all__) - bound)}")


def test_every_public_optim_symbol_has_a_docstring():
  constants = attribute_docstrings(ROOT / "signflax" / "optim")
  undocumented = [name for name in public_names()
                  if not (own_docstring(getattr(sfo, name)) or constants.get(name, "").strip())]
  assert not undocumented, f"public symbols of signflax.optim without a docstring: {undocumented}"


def reference_coverage(page: str) -> set[str]:
  """The names of signflax.optim that docs/api/optim.md renders: all of ``__all__`` under
  ``::: signflax.optim`` unless its options restrict ``members``; ``::: signflax.optim.X``;
  a heading with the anchor ``{#signflax.optim.X}`` (an object re-exported from Optax,
  which must then link to Optax's own reference)."""
  covered = set()
  blocks = re.split(r"^(?=::: )", page, flags=re.M)
  for block in blocks:
    head = re.match(r"::: (\S+)", block)
    if not head:
      continue
    target = head.group(1)
    if target == "signflax.optim":
      members = re.search(r"^\s+members:\s*\[([^\]]*)\]", block, flags=re.M)
      if re.search(r"^\s+members:\s*(false|no)\s*$", block, flags=re.M):
        continue
      covered |= ({m.strip().strip("'\"") for m in members.group(1).split(",")} if members
                  else set(public_names()))
    elif target.startswith("signflax.optim."):
      covered.add(target.rsplit(".", 1)[1])
  for name in re.findall(r"\{#signflax\.optim\.(\w+)\}", page):
    section = page[page.index(f"{{#signflax.optim.{name}}}"):][:1500]
    if "optax.readthedocs.io" in section and getattr(sfo, name).__module__.startswith("optax"):
      covered.add(name)
  return covered


def test_every_public_optim_symbol_is_in_the_api_reference():
  missing = sorted(set(public_names()) - reference_coverage(OPTIM_PAGE.read_text()))
  assert not missing, f"public symbols of signflax.optim missing from {OPTIM_PAGE}: {missing}"


def test_the_coverage_checks_can_fail():
  assert reference_coverage("::: signflax.optim\n    options:\n      members: [muon]\n") == {
      "muon"}
  assert "signum" not in reference_coverage("# nothing rendered\n")
  assert own_docstring({"a": 1}) == ""
  assert own_docstring(sfo.ScaleBySignumState)
  Bare = __import__("collections").namedtuple("Bare", "a b")
  assert own_docstring(Bare) == ""


def test_readme_links_resolve():
  """README.md is outside the site, so the strict build does not check its links."""
  readme = (ROOT / "README.md").read_text()
  links = re.findall(r"\]\(([^)\s]+)\)", readme)
  local = [link.split("#")[0] for link in links if "://" not in link and link.split("#")[0]]
  assert local, "README.md links into docs/"
  broken = [link for link in local if not (ROOT / link).exists()]
  assert not broken, f"README.md links to missing files: {broken}"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
  missing = [m for m in DOCS_EXTRA if importlib.util.find_spec(m.split(".")[0]) is None]
  if missing:
    pytest.skip(f"the docs extra is not installed ({', '.join(missing)}): "
                "pip install -e '.[docs]'")
  site = tmp_path / "site"
  env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
  result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  html = (site / "api" / "optim" / "index.html").read_text()
  rendered = set(re.findall(r'id="signflax\.optim\.(\w+)"', html))
  assert not set(public_names()) - rendered, (
      f"not rendered in the API reference: {sorted(set(public_names()) - rendered)}")
  architecture = (site / "architecture" / "index.html").read_text()
  assert "signflax.experiments.fits" in architecture  # the layer table, included from the test
