"""The repository's Markdown pages as the tests read them: headings, anchors, links, tables."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pages():
  """Every Markdown page of the repository, relative to ROOT."""
  out = ['README.md', 'benchmarks/README.md', 'artifacts/README.md']
  out += sorted(f'docs/{f}' for f in os.listdir(os.path.join(ROOT, 'docs')) if f.endswith('.md'))
  return out


def read(page):
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    return f.read()


def _prose(text):
  """(line number, line) outside fenced code blocks."""
  fenced = False
  for i, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith('```'):
      fenced = not fenced
      continue
    if not fenced:
      yield i, line


def headings(page):
  """[(level, text)] of the page's Markdown headings, in order."""
  out = []
  for _, line in _prose(read(page)):
    m = re.match(r'(#{1,6})\s+(.*?)\s*#*\s*$', line)
    if m:
      out.append((len(m.group(1)), m.group(2)))
  return out


def anchor(heading):
  """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces '-'."""
  text = re.sub(r'`', '', heading).strip().lower()
  return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def links(page):
  """[(line number, target)] of the page's Markdown links and images."""
  out = []
  for i, line in _prose(read(page)):
    out += [(i, t) for t in re.findall(r'\]\(([^)\s]+)\)', line)]
  return out


def section(page, heading):
  """The lines of the section under `heading` (to the next heading of its level or above)."""
  lines, level, inside = [], None, False
  for _, line in _prose(read(page)):
    m = re.match(r'(#{1,6})\s+(.*?)\s*$', line)
    if m and inside and len(m.group(1)) <= level:
      break
    if m and m.group(2) == heading:
      inside, level = True, len(m.group(1))
      continue
    if inside:
      lines.append(line)
  if not inside:
    raise AssertionError(f'{page} has no section {heading!r}')
  return lines


def table_names(page, heading):
  """The backquoted names in the first column of the tables of a section."""
  names = []
  for line in section(page, heading):
    cells = line.split('|')
    if line.startswith('|') and len(cells) > 2 and not set(cells[1].strip()) <= {'-'}:
      names += re.findall(r'`([^`]+)`', cells[1])
  return names
