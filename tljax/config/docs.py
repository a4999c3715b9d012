"""The config reference from checks.FIELDS: docs/configuration.md and `launch.py --help`.

Regenerate the page after adding or changing a field (tests/test_docs.py fails while it is
stale): `python -m tljax.config.docs > docs/configuration.md`, from the repository root.
"""

import importlib.util
import os
import sys
import textwrap

from tljax.config import checks
from tljax.runtime import cli

PAGE = 'docs/configuration.md'
COMMAND = f'python -m tljax.config.docs > {PAGE}'
_KINDS = {str: 'string', int: 'int', float: 'float', bool: 'bool', (int, float): 'number',
          (tuple, list): 'tuple'}


def kind_name(kind):
  """'number' for (int, float), 'tuple' for (tuple, list), else the type's plain name."""
  return _KINDS.get(kind, getattr(kind, '__name__', str(kind)))


def accepted(field, config):
  """The words that say what `field` accepts (checks.FIELDS), at `config`'s other fields."""
  spec = checks.FIELDS[field]
  text = spec.accepted(config) if callable(spec.accepted) else spec.accepted
  text = text.split('; ', 1)[1] if text.startswith('unknown ') else text
  return text[len('must be '):] if text.startswith('must be ') else text


def _cell(text):
  return str(text).replace('|', '\\|').replace('\n', ' ')


def _yes(flag):
  return 'yes' if flag else 'no'


def field_table(base):
  """The Markdown table of every field: description, default (`base`), type, accepted values,
  whether it changes a run's numbers and the source pretraining."""
  lines = ['| field | what it does | default | type | accepts | changes numbers | '
           'changes pretraining |', '|---|---|---|---|---|---|---|']
  for name, spec in checks.FIELDS.items():
    lines.append(f'| `{name}` | {_cell(spec.doc)} | `{_cell(repr(base[name]))}` | '
                 f'{kind_name(spec.kind)} | {_cell(accepted(name, base))} | '
                 f'{_yes(spec.numbers)} | {_yes(spec.pretraining)} |')
  return lines


def changed_fields(config, base):
  """{field: value} where `config` differs from `base`, in FIELDS order."""
  return {k: config[k] for k in checks.FIELDS if k in config and config[k] != base[k]}


def configs_table(configs, base):
  """One row per shipped config ({name: config}): the fields it changes from configs/base.py."""
  lines = ['| config | changes from `configs/base.py` |', '|---|---|']
  for name, config in configs.items():
    diff = ', '.join(f'`{k}={v!r}`' for k, v in changed_fields(config, base).items())
    lines.append(f'| `configs/{name}.py` | {_cell(diff)} |')
  return lines


_INTRO = """# Configuration

What each config field does, its default, the values it accepts, and whether changing it changes
a run's numbers or the source pretraining.

<!-- Generated from tljax/config/checks.py FIELDS and configs/base.py by
`{command}`; do not edit by hand. -->

A config file (`configs/*.py`) starts from `configs/base.py` and changes fields; the command line
changes any field of it: `python launch.py --config=configs/test2.py --config.batch_size=32
--config.seeds='(0,1,2)'`. `python launch.py --help` lists the fields with the values of the
config it is given. A mistyped field, or a value outside what the field accepts, stops the run
before any work with one line naming the field, the value and what is accepted (for example
`config.bn_momentum=1.5: must be a number in [0, 1) (BatchNorm moving-average momentum; Keras:
0.99).`).

**Changes numbers.** A field marked *yes* is part of every run's fingerprint: a workdir whose runs
were made with another value refuses to run and lists the changed fields, unless you pass
`--config.restart=True` or another `--workdir`. A field marked *no* may change between two runs
on one workdir, whose finished runs are then kept; `cases` and `seeds` may grow, and only the new
runs train ([reliability.md](reliability.md#what-a-rerun-reuses)).

**Changes pretraining.** A field marked *yes* is part of the source pretraining's cache key
(with the seed and the source data's identity): a new value pretrains again; the old cache stays.

## Fields
"""


def page(base, configs):
  """docs/configuration.md: the introduction, the field table (defaults from `base`) and the
  shipped `configs` ({name: config}) against `base`."""
  return '\n'.join([_INTRO.format(command=COMMAND), *field_table(base), '',
                    '## The shipped configs', '',
                    'What each config file changes from `configs/base.py`.', '',
                    *configs_table(configs, base)]) + '\n'


def help_lines(config, base, width=100):
  """The config fields for `launch.py --help`: each with `config`'s value (and base's when it
  differs) and its description."""
  lines = ["Config fields (--config.FIELD=VALUE) with this config's values; each field's "
           'accepted values', f'and what it changes: {PAGE}']
  for name, spec in checks.FIELDS.items():
    value = f'--config.{name}={config[name]!r}'
    if config[name] != base[name]:
      value += f'  (configs/base.py: {base[name]!r})'
    lines.append(f'  {value}')
    lines += textwrap.wrap(spec.doc, width, initial_indent=' ' * 6, subsequent_indent=' ' * 6)
  return lines


def _load(root, name):
  """configs/<name>.py's get_config() (the repository's configs, with `root` importable)."""
  if root not in sys.path:
    sys.path.insert(0, root)
  path = os.path.join(root, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'configs.{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shipped(root):
  """The names of the shipped configs: configs/*.py but base.py, sorted."""
  return sorted(f[:-3] for f in os.listdir(os.path.join(root, 'configs'))
                if f.endswith('.py') and f not in ('__init__.py', 'base.py'))


def generate(root):
  """docs/configuration.md as `root`'s configs make it."""
  return page(_load(root, 'base'), {n: _load(root, n) for n in shipped(root)})


def main(argv):
  if cli.asks_help(argv):
    print(f'Usage: {COMMAND}\n\nPrints {PAGE}, generated from tljax/config/checks.py FIELDS and '
          'configs/*.py;\nrun it from the repository root after adding or changing a config field.'
          f'\n\nExample:\n  {COMMAND}')
    return
  sys.stdout.write(generate(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))))


if __name__ == '__main__':
  main(sys.argv)
