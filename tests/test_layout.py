"""The package's house rules, checked on its source: one-line module docstrings, no module over
400 lines, no function over 60, no import cycle (function-level imports included), and the
core never imports the cluster launcher."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'tljax')
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Entry points may choose between the core and the cluster; nothing else may import it.
ENTRY_POINTS = ('tljax.run', 'tljax.status')


def _modules():
  """{dotted name: path} of every module of the package."""
  out = {}
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(d, f)
  return out


MODULES = _modules()


def _tree(name):
  with open(MODULES[name], encoding='utf-8') as f:
    return ast.parse(f.read())


def _imports(name):
  """The tljax modules `name` imports anywhere in its body (top level or inside functions)."""
  pkg = name if MODULES[name].endswith('__init__.py') else name.rpartition('.')[0]
  out = set()
  for node in ast.walk(_tree(name)):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = pkg.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in MODULES else base
                 for a in node.names]
    else:
      continue
    out |= {t for t in targets if t in MODULES and t != name}
  return out


@pytest.mark.parametrize('name', sorted(MODULES))
def test_each_module_says_what_it_owns_in_one_line_and_stays_small(name):
  tree = _tree(name)
  doc = ast.get_docstring(tree)
  assert doc, f'{name} has no docstring'
  first = doc.splitlines()[0]
  assert first.endswith('.') or (len(doc.splitlines()) > 1 and doc.splitlines()[1]), name
  with open(MODULES[name], encoding='utf-8') as f:
    lines = len(f.read().splitlines())
  assert lines <= MAX_MODULE_LINES, f'{name}: {lines} lines'
  long = [f'{n.name} ({n.end_lineno - n.lineno + 1} lines)' for n in ast.walk(tree)
          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
          and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f'{name}: functions over {MAX_FUNCTION_LINES} lines: {long}'


def test_no_import_cycle_in_the_package():
  graph = {m: _imports(m) for m in MODULES}
  state, cycles = {}, []

  def visit(m, path):
    state[m] = 'open'
    for n in sorted(graph[m]):
      if n.startswith(m + '.'):
        continue  # a package's __init__ may import its own modules
      if state.get(n) == 'open':
        cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
      elif n not in state:
        visit(n, path + [n])
    state[m] = 'done'

  for m in sorted(MODULES):
    if m not in state:
      visit(m, [m])
  assert not cycles, f'import cycles: {cycles}'


def test_the_core_never_imports_the_cluster_launcher():
  cluster = {m for m in MODULES if m.startswith('tljax.cluster')}
  assert cluster, 'tljax.cluster is missing'
  offenders = {m: sorted(_imports(m) & cluster) for m in MODULES
               if m not in cluster and m not in ENTRY_POINTS and _imports(m) & cluster}
  assert not offenders, offenders


def test_modules_are_grouped_in_subpackages():
  """Only the command-line entry points lie at the top; everything else is in a subpackage whose
  docstring says what it owns."""
  flat = sorted(m for m in MODULES if m.count('.') == 1 and not MODULES[m].endswith('__init__.py'))
  assert flat == ['tljax.convert', 'tljax.recommend', 'tljax.run', 'tljax.status'], flat
  packages = sorted(m for m in MODULES if m.count('.') == 1 and MODULES[m].endswith('__init__.py'))
  assert len(packages) >= 8, packages
