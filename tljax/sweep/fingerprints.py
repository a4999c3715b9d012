"""Fingerprints: what makes a run's numbers (config fields, case rules, seed, data, tool versions)."""

import ast
import functools
import glob
import hashlib
import json
import os

import jax

from tljax.config import checks

# Config fields that change no number (checks.FIELDS says which): a workdir may be resumed or
# grown with them changed. They include the sweep's lists `cases` and `seeds` (a run's own case
# and seed are in its fingerprint) and the data folders' paths (their contents are fingerprinted
# instead: a moved copy resumes and a changed folder does not).
SAFE_FIELDS = checks.SAFE_FIELDS
# The tools whose versions are in every fingerprint: an upgrade never mixes old records with new.
TOOLS = ('tljax', 'jax', 'jaxlib', 'flax')
# Fields of one process (or one launch) of a multi-host run, not of the run: fingerprinted and
# compared at these values, so the processes of a run share one fingerprint, a rerun may use
# another coordinator address, and a single-process run's fingerprint is what it always was.
PER_PROCESS = {'process_id': 0, 'coordinator_address': ''}
# Fields added to configs/base.py after runs were made, at the value every earlier run had: left
# out of the fingerprint and the comparison at that value, so an earlier workdir resumes.
# (pretrain_seed=-1: before it, each seed pretrained its own model.)
ADDED_FIELDS = {'alpha': 1.0, 'minimalistic': False, 'short_training_fraction': 0.1,
                'pretrain_seed': -1}
# Fields that change nothing unless the weights are pretrained on the source data.
SOURCE_ONLY = ('pretrain_seed',)


def normalise(d):
  d = json.loads(json.dumps(d, default=list))
  d = {k: v for k, v in d.items() if k not in ADDED_FIELDS or v != ADDED_FIELDS[k]}
  if d.get('pretrained', 'source') != 'source':
    d = {k: v for k, v in d.items() if k not in SOURCE_ONLY}
  return {**d, **{k: v for k, v in PER_PROCESS.items() if k in d}}


def config_diff(old, new):
  """{field: (old, new)} for the fields that differ, SAFE_FIELDS excluded (a field older than
  the workdir's config at the value its runs had: ADDED_FIELDS)."""
  a, b = normalise(old), normalise(new)
  shown = lambda d, k: d.get(k, ADDED_FIELDS.get(k))
  return {k: (shown(old, k), shown(new, k)) for k in sorted(set(a) | set(b))
          if k not in SAFE_FIELDS and a.get(k) != b.get(k)}


def versions():
  """{tool: version} of TOOLS, as installed in this process, and `tljax_code`: code_digest()."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import tljax  # pylint: disable=g-import-not-at-top
  return {'tljax': tljax.__version__, 'tljax_code': code_digest(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'flax': flax.__version__}


@functools.cache
def code_digest(root=None):
  """The first 16 hex digits of the sha256 of tljax's code (the package under `root`, default
  this one): every module's syntax tree (ast.dump, this Python's) without its docstrings, by
  path. A comment or docstring edit keeps it; any change to what runs does not, so no record
  made by other code is reused."""
  root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  h = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(root, '**', '*.py'), recursive=True)):
    with open(path, 'rb') as f:
      tree = ast.parse(f.read(), filename=path)
    for node in ast.walk(tree):
      body = getattr(node, 'body', None)
      if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
          and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
          and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]
    h.update(os.path.relpath(path, root).encode() + b'\0' + ast.dump(tree).encode() + b'\0')
  return h.hexdigest()[:16]


def _sha256(obj):
  blob = json.dumps(obj, sort_keys=True, separators=(',', ':'), ensure_ascii=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def run_fingerprint(config, data_identity=None, case=None, seed=None, tools=None):
  """sha256 of what makes a run's numbers: the canonical JSON of every config field except
  SAFE_FIELDS, `data_identity` (a JSON-able dict describing the data beyond the config, e.g.
  image-folder fingerprints; {} when the config names the data fully), the versions of TOOLS
  (`tools`, default this process's) and, for one (case, seed) run, the case's freeze rules and
  training-mode layers (`case`: a freezing.CaseSpec) and its seed. Without `case` it is the
  sweep's config fingerprint, which every run of the workdir shares."""
  cfg = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  blob = {'config': {k: v for k, v in normalise(cfg).items() if k not in SAFE_FIELDS},
          'data': normalise(data_identity or {}), 'tools': tools or versions()}
  if case is not None:
    blob['run'] = normalise({'case': case.name, 'family': case.family, 'rules': case.rules,
                              'active_layers': case.active_layers, 'seed': int(seed)})
  return _sha256(blob)
