"""The commands' console: --help with usage, flags and an example; no TensorFlow C++ log lines."""

import os
import textwrap

# TensorFlow (the input pipeline) writes C++ log lines to stderr while it loads and on first
# use, before absl's logging can filter them: "oneDNN custom operations are on" (twice, at any
# TF_CPP_MIN_LOG_LEVEL) and, without AVX-512, "E0000 ... oneDNN supports DT_UINT8 only on
# platforms with AVX-512", which reads as an error. Without oneDNN's custom operations neither
# is written, and the images are decoded and resized alike on every CPU. A value the user set
# wins. Must be in the environment before TensorFlow is imported.
TENSORFLOW_ENV = {'TF_CPP_MIN_LOG_LEVEL': '2', 'TF_ENABLE_ONEDNN_OPTS': '0'}
HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull')
WIDTH = 100


def quiet_tensorflow():
  """Sets TENSORFLOW_ENV where the environment does not already say otherwise."""
  for name, value in TENSORFLOW_ENV.items():
    os.environ.setdefault(name, value)


def asks_help(argv):
  """Whether the command line `argv` (argv[0] the program) asks for help."""
  return any(a in HELP_FLAGS for a in argv[1:])


def _flag_lines(flag):
  """'  --name' then its help and default, indented."""
  name = f'--[no]{flag.name}' if flag.flag_type() == 'bool' else f'--{flag.name}'
  default = '' if flag.default is None else f' (default: {flag.default})'
  return [f'  {name}'] + textwrap.wrap(f'{flag.help}{default}', WIDTH, initial_indent=' ' * 6,
                                       subsequent_indent=' ' * 6)


def help_text(usage, about, flag_values, examples):
  """The help of a command: `usage` (its synopsis), `about` (what it does), each flag of
  absl's `flag_values` with its help and default, and `examples` (command lines)."""
  lines = [f'Usage: {usage}', '']
  lines += textwrap.wrap(about, WIDTH) + ['', 'Flags:']
  for name in flag_values:
    lines += _flag_lines(flag_values[name])
  lines += ['', 'Example' + ('s:' if len(examples) > 1 else ':')]
  lines += [f'  {e}' for e in examples]
  return '\n'.join(lines)


def parse_workdir_args(fv, argv, workdir_what):
  """Parses `argv` into the FlagValues `fv` of a command taking --workdir; ValueError for extra
  arguments or a missing --workdir (`workdir_what` says what it must be)."""
  rest = fv(list(argv))
  if len(rest) > 1:
    raise ValueError(f'unexpected arguments: {" ".join(rest[1:])}')
  if not fv.workdir:
    raise ValueError(f'--workdir is required: {workdir_what}')
