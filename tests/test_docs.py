"""The documentation cannot go stale: the README's size and set-up commands, every cited section
and every link between pages exists, the configuration page is the generator's output, and the
workdir's paths and the package's modules are each documented."""

import inspect
import os
import re

import pytest

from docs_pages import ROOT, anchor, headings, links, pages, read, section, table_names
from tljax.config import checks
from tljax.config import docs as config_docs
from tljax.sweep import layout

INSTALL = "pip install -e '.[test]'"
TESTS = 'python -m pytest -q tests'
# A citation of a page's section in code, configs, tests or setup.cfg: a page, then the heading
# in double quotes ('README "X"', 'README, "X"', 'docs/x.md "X"', 'benchmarks/README.md "X"').
CITATION = re.compile(r'((?:docs/[\w-]+|benchmarks/README|README)(?:\.md)?),?\s+"([^"\n]+)"')
PAGE_NAME = re.compile(r'\b(docs/[\w-]+\.md|benchmarks/README\.md)')
# Words of a lab notebook rather than a reference: the reader was not there.
NOTEBOOK = re.compile(r"\bthis session\b|\bsession's\b|\bthe session\b|\bthis session's\b", re.I)


def _sources():
  """(path, text) of the code, configs, tests, benchmarks, setup.cfg, launch.py and CI."""
  out = []
  for top in ('tljax', 'configs', 'tests', 'benchmarks'):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
      out += [os.path.join(d, f) for f in files if f.endswith(('.py', '.sh', '.cfg'))]
  out += [os.path.join(ROOT, f) for f in ('setup.cfg', 'launch.py', os.path.join('.ci', 'run'))]
  return [(os.path.relpath(p, ROOT), open(p, encoding='utf-8').read()) for p in sorted(out)
          if os.path.exists(p) and os.path.basename(p) != 'test_docs.py']


def _page_of(cited):
  return 'README.md' if cited == 'README' else cited if cited.endswith('.md') else cited + '.md'


def test_the_readme_is_short_and_gives_both_set_up_commands():
  text = read('README.md')
  assert len(text.splitlines()) <= 250, len(text.splitlines())
  first_screen = '\n'.join(text.splitlines()[:60])
  assert INSTALL in first_screen and 'python launch.py' in first_screen
  assert TESTS in first_screen
  with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as f:
    ci = f.read()
  assert INSTALL in ci and TESTS in ci  # CI runs what the README tells a newcomer to run


def test_every_cited_section_exists():
  cited = 0
  for path, text in _sources():
    for page, heading in CITATION.findall(text):
      page = _page_of(page)
      assert os.path.exists(os.path.join(ROOT, page)), f'{path} cites {page}, which is missing'
      assert heading in [h for _, h in headings(page)], (
          f'{path} cites {page} "{heading}", which has no such heading')
      cited += 1
    for page in PAGE_NAME.findall(text):
      assert os.path.exists(os.path.join(ROOT, page)), f'{path} names {page}, which is missing'
  assert cited >= 8


def test_the_citation_check_finds_a_missing_section():
  """The pattern above sees the citations as the code writes them."""
  found = CITATION.findall('x  # (README "FLOPs")\n# README, "Tests"\n'
                           '# (docs/accounting.md "FLOPs per backend")')
  assert found == [('README', 'FLOPs'), ('README', 'Tests'),
                   ('docs/accounting.md', 'FLOPs per backend')]
  assert 'FLOPs' not in [h for _, h in headings('README.md')]


@pytest.mark.parametrize('page', pages())
def test_links_between_pages_reach_a_file_and_a_heading(page):
  for line, target in links(page):
    if re.match(r'[a-z]+:', target):
      continue  # another site
    path, _, frag = target.partition('#')
    resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    assert os.path.exists(os.path.join(ROOT, resolved)), f'{page}:{line}: {target}'
    if frag:
      assert frag in [anchor(h) for _, h in headings(resolved)], f'{page}:{line}: {target}'


def test_every_page_says_first_what_it_answers():
  for page in pages():
    lines = [l for l in read(page).splitlines() if l.strip()]
    assert lines[0].startswith('# ') and not lines[1].startswith('#'), page


def test_no_lab_notebook_voice():
  texts = _sources() + [(p, read(p)) for p in pages()]
  found = [f'{p}: {m.group(0)!r}' for p, t in texts for m in NOTEBOOK.finditer(t)]
  assert not found, found


def test_every_config_field_has_a_one_line_description():
  for name, spec in checks.FIELDS.items():
    assert spec.doc.strip(), f'checks.FIELDS[{name!r}] has no doc'
    assert '\n' not in spec.doc and len(spec.doc) <= 130, name


def test_the_configuration_page_is_generated_and_current():
  page = read(config_docs.PAGE)
  assert page == config_docs.generate(ROOT), (
      f'{config_docs.PAGE} is stale: run {config_docs.COMMAND}')
  base = config_docs._load(ROOT, 'base')  # pylint: disable=protected-access
  for name, spec in checks.FIELDS.items():
    row = next(l for l in page.splitlines() if l.startswith(f'| `{name}` |'))
    assert f'`{base[name]!r}`' in row and spec.doc in row, name
    assert row.endswith(f"| {'yes' if spec.numbers else 'no'} | "
                        f"{'yes' if spec.pretraining else 'no'} |"), name


def test_a_field_without_a_description_fails(monkeypatch):
  """What a new field without its doc would do to the check above."""
  fields = dict(checks.FIELDS, epochs=checks.FIELDS['epochs']._replace(doc=''))
  monkeypatch.setattr(checks, 'FIELDS', fields)
  with pytest.raises(AssertionError, match='epochs'):
    test_every_config_field_has_a_one_line_description()
  assert config_docs.generate(ROOT) != read(config_docs.PAGE)


def _layout_paths():
  """Every path layout.py names, relative to the workdir, with placeholders for its parts."""
  args = {'workdir': 'W', 'run': '<run>', 'case': '<run>', 'stamp': '<launch>',
          'fingerprint': 'F' * 12, 'name': None}
  out = [*layout.OUTPUTS, layout.LOCK, *(d + '/' for d in layout.DIRS)]
  for name, fn in inspect.getmembers(layout, inspect.isfunction):
    if (fn.__module__ != layout.__name__ or not name.endswith(('_path', '_dir'))
        or name == 'file_path'):  # the named files above
      continue
    params = list(inspect.signature(fn).parameters)
    assert all(p in args and args[p] for p in params), (
        f'layout.{name}{params}: give the test a placeholder for its parameters')
    path = os.path.relpath(fn(*[args[p] for p in params]), os.path.abspath('W'))
    path = path.replace('F' * 12, '<fingerprint 12>').replace('%j', '<job id>')
    out.append(path + ('/' if name.endswith('_dir') else ''))
  return out


def test_the_outputs_page_names_every_path_of_the_workdir():
  documented = table_names('docs/outputs.md', 'The workdir')
  paths = _layout_paths()
  assert 'cases/<run>.json' in paths and 'cache_<run>/' in paths  # the placeholders worked
  missing = [p for p in paths if p not in documented]
  assert not missing, f'add rows to docs/outputs.md "The workdir": {missing}'
  readme = read('artifacts/README.md')
  assert all(f'`{n}`' in readme for n in layout.OUTPUTS), 'artifacts/README.md lists the outputs'


def test_the_development_page_names_every_module():
  text = '\n'.join(section('docs/development.md', 'Layout'))
  missing = []
  for d, _, files in os.walk(os.path.join(ROOT, 'tljax')):
    for f in files:
      if f.endswith('.py') and f != '__init__.py':
        rel = os.path.relpath(os.path.join(d, f), ROOT)
        top = os.path.dirname(rel) == 'tljax'
        if (rel if top else f'`{f}`') not in text:
          missing.append(rel)
  assert not missing, f'name these modules in docs/development.md "Layout": {missing}'
