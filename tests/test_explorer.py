"""The atom explorer page (gatoms_jax/pipeline/explorer.py).

Without a browser: at the paper's scale (5,000 documents x 500 atoms, made-up
artefacts) the page is one file under 10 MB with no URL in it, and its inline
data survives hostile document text. With a real headless Chromium (the Debian
package, driven by playwright, every non-file request aborted): the tiny
pipeline's page sorts, filters, opens an atom with its top documents,
histogram and steering curve, and opens a document; and the paper-scale page
renders its first table page and an atom.

The browser tests skip when chromium or playwright is missing, unless CI is
set, where they fail (.ci/run installs chromium).
"""

import json
import os
import re
import sys
import time

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gatoms_jax.method import atoms as atoms_lib  # noqa: E402
from gatoms_jax.core.data.documents import Document  # noqa: E402
from gatoms_jax.core.io import write_json  # noqa: E402
from gatoms_jax.pipeline import explorer  # noqa: E402

CHROMIUM = '/usr/bin/chromium'
LAUNCH_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]
# A reference to a resource: src=/href= attributes, JS/CSS imports, url().
_REFERENCE = re.compile(
  r'(?:\b(?:src|href)\s*=\s*["\']?|\bimport\b[^;\n]*?["\'(]|url\(\s*["\']?)'
  r'\s*https?:',
  re.I,
)
_HOSTILE = '</script><img src="https://example.invalid/x.png"> & <b>'


# ------------------------------------------------------------ synthetic run


def _words(rng, n):
  vocab = ['alpha', 'beta', 'gamma', 'delta', 'answer', 'list', 'the', 'of']
  return ' '.join(rng.choice(vocab, n))


def _synthetic_run(root, n_docs, n_atoms, nnz_per_doc, seed=0):
  """Artefacts shaped like a pipeline run's, with made-up values.

  Each document uses `nnz_per_doc` random atoms; its prompt and answer are
  longer than the explorer's excerpts, so every document costs the most
  text it can. Returns (run_dir, documents, codes, ids).
  """
  rng = np.random.default_rng(seed)
  run = os.path.join(root, 'synthetic')
  for stage in ('projection', 'dictionary', 'atoms', 'steering'):
    os.makedirs(os.path.join(run, stage))
  ids = [f'doc{i:05d}' for i in range(n_docs)]
  labels = [f'task{i % 12}' for i in range(n_docs)]
  documents = [
    Document(
      doc_id=ids[i],
      messages=(
        {'role': 'user', 'content': _words(rng, 80)},
        {'role': 'assistant', 'content': _words(rng, 160)},
      ),
      label=labels[i],
    )
    for i in range(n_docs)
  ]
  documents[0] = Document(
    doc_id=ids[0],
    messages=(
      {'role': 'user', 'content': _HOSTILE},
      {'role': 'assistant', 'content': 'see https://example.invalid/page'},
    ),
    label=labels[0],
  )
  codes = np.zeros((n_docs, n_atoms), np.float32)
  for i in range(n_docs):
    cols = rng.choice(n_atoms, nnz_per_doc, replace=False)
    codes[i, cols] = rng.normal(size=nnz_per_doc)
  np.save(os.path.join(run, 'dictionary', 'codes.npy'), codes)
  write_json(os.path.join(run, 'projection', 'ids.json'), ids)
  summaries = []
  for k in range(n_atoms):
    top = np.argsort(-np.abs(codes[:, k]))[:20]
    counts = {}
    for r in top:
      counts[labels[r]] = counts.get(labels[r], 0) + 1
    majority = max(counts, key=counts.get)
    summaries.append(
      {
        'atom': k,
        'n_active': int((codes[:, k] != 0).sum()),
        'top_doc_ids': [ids[r] for r in top],
        'coherence': float(rng.uniform(0, 1)),
        'keywords': [f'kw{k}', f'word{k % 7}'],
        'majority_label': majority,
        'purity': counts[majority] / len(top),
        'label_counts': counts,
      }
    )
  atoms_lib.save_atom_summaries(
    os.path.join(run, 'atoms', 'atoms.json'), summaries
  )
  assign = rng.integers(0, n_atoms, n_docs)
  np.save(os.path.join(run, 'atoms', 'kmeans_assignments.npy'), assign)
  clusters = [
    {'atom': c, 'n_active': int((assign == c).sum()), 'coherence': 0.1}
    for c in np.unique(assign)
  ]
  atoms_lib.save_atom_summaries(
    os.path.join(run, 'atoms', 'kmeans.json'), clusters
  )
  levels = (-2.0, -0.5, 0.5, 2.0)

  def variants(rate):
    return {
      f'{lv:+g}': {
        'rate': rate + 10 * lv,
        'kl': abs(lv),
        'degenerate': 0.0,
        'coefficient': 3.0 * lv,
        'outputs': ['out'] * 40,
      }
      for lv in levels
    }

  write_json(
    os.path.join(run, 'steering', 'sweeps.json'),
    {
      'bullets': {
        'baseline': {'rate': 40.0, 'outputs': ['base'] * 40},
        'prompts': ['p'] * 40,
        'n_prompts': 40,
        'directions': {'atom3+4': {'variants': variants(40.0)}}
        | {f'random{s}': {'variants': variants(38.0)} for s in range(4)},
        'summary': {'verdicts': {}},
      }
    },
  )
  write_json(os.path.join(run, 'config.json'), {'atoms': {'top_n': 20}})
  return run, documents, codes, ids


@pytest.fixture(scope='module')
def paper_scale(tmp_path_factory):
  """The explorer of a 5,000 x 500 run; ~20 atoms per document (4 %)."""
  root = tmp_path_factory.mktemp('paper_scale')
  run, documents, codes, ids = _synthetic_run(root, 5000, 500, nnz_per_doc=20)
  t0 = time.perf_counter()
  path = explorer.write_explorer(run, documents)
  print(
    f'paper-scale explorer: {os.path.getsize(path) / 1e6:.2f} MB written in '
    f'{time.perf_counter() - t0:.1f} s (load average {os.getloadavg()})'
  )
  return path, documents, codes, ids


def _inline_data(html):
  start = html.index('<script id="explorer-data" type="application/json">')
  start = html.index('>', start) + 1
  return json.loads(html[start : html.index('</script>', start)])


def test_paper_scale_file_is_small_and_offline(paper_scale):
  path, documents, codes, ids = paper_scale
  assert os.path.getsize(path) <= 10 * 1024 * 1024
  with open(path, encoding='utf-8') as f:
    html = f.read()
  assert not _REFERENCE.search(html)
  # Stronger: no scheme-and-slashes text at all, document text included.
  assert 'http://' not in html and 'https://' not in html
  data = _inline_data(html)
  assert len(data['docs']['id']) == 5000 and len(data['atoms']) == 500
  # Hostile text comes back exactly through JSON.parse-compatible escapes.
  assert data['docs']['prompt'][0] == _HOSTILE
  assert data['docs']['answer'][0] == 'see https://example.invalid/page'
  # Codes are stored exactly where they are non-zero (4 significant digits).
  for atom in data['atoms'][:20]:
    col = codes[:, atom['atom']]
    assert sorted(atom['rows']) == np.flatnonzero(col).tolist()
    np.testing.assert_allclose(atom['values'], col[atom['rows']], rtol=5e-4)


def test_collect_reads_sweeps_and_kmeans(tmp_path):
  run, documents, codes, ids = _synthetic_run(tmp_path, 40, 6, nnz_per_doc=2)
  data = explorer.collect(run, documents)
  by_atom = {a['atom']: a for a in data['atoms']}
  # atom3+4 is one summed direction: both atoms show it, the others none.
  assert [s['direction'] for s in by_atom[3]['sweeps']] == ['atom3+4']
  assert by_atom[4]['sweeps'] == by_atom[3]['sweeps']
  assert by_atom[0]['sweeps'] == [] and by_atom[0]['steering_effect'] is None
  sweep = data['sweeps']['bullets']
  assert sweep['directions']['random0']['atoms'] is None
  assert [p['level'] for p in sweep['directions']['atom3+4']['points']] == [
    -2.0,
    -0.5,
    0.5,
    2.0,
  ]
  # The overlapping cluster is the best Jaccard match over full members.
  assign = np.load(os.path.join(run, 'atoms', 'kmeans_assignments.npy'))
  for k, a in by_atom.items():
    rows = set(np.flatnonzero(codes[:, k]).tolist())
    best = max(
      len(rows & set(np.flatnonzero(assign == c).tolist()))
      / len(rows | set(np.flatnonzero(assign == c).tolist()))
      for c in np.unique(assign)
    )
    assert a['kmeans']['jaccard'] == pytest.approx(best, abs=1e-3)


def test_missing_artefacts_raise_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match='ids.json'):
    explorer.collect(str(tmp_path))


# ------------------------------------------------------------ the browser


@pytest.fixture(scope='module')
def browser():
  missing = []
  if not os.access(CHROMIUM, os.X_OK):
    missing.append(f'{CHROMIUM} (apt-get install chromium)')
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    missing.append("playwright (pip install -e '.[test]')")
  if missing:
    message = 'explorer browser test needs ' + ', '.join(missing)
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
    yield b
    b.close()


class _Page:
  """A page whose every non-file request is aborted and recorded."""

  def __init__(self, browser):
    self.context = browser.new_context(viewport={'width': 1280, 'height': 900})
    self.blocked, self.errors = [], []

    def guard(route):
      url = route.request.url
      if url.startswith('file:'):
        route.continue_()
      else:
        self.blocked.append(url)
        route.abort()

    self.context.route('**/*', guard)
    self.page = self.context.new_page()
    self.page.on(
      'request',
      lambda r: (
        None if r.url.startswith('file:') else self.blocked.append(r.url)
      ),
    )
    self.page.on('pageerror', lambda e: self.errors.append(str(e)))
    self.page.on(
      'console',
      lambda m: self.errors.append(m.text) if m.type == 'error' else None,
    )

  def check_clean(self):
    assert self.blocked == [], f'network requests attempted: {self.blocked}'
    assert self.errors == [], f'page errors: {self.errors}'
    self.context.close()


def _navigate(page, link, ready):
  """Clicks `link` and waits until the view it routes to shows `ready`.

  Every view change goes through a hash change, whose event (and so the
  re-render) comes after the click returns: counting at once races it.
  """
  page.click(link)
  page.wait_for_selector(ready)


def _column(page, index):
  cells = page.locator(f'#atoms-table tbody tr td:nth-child({index})')
  return [float(x) if x != '–' else None for x in cells.all_inner_texts()]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The tiny pipeline end to end (one behaviour swept), and its documents."""
  import tiny_tokenizer
  from test_pipeline import tiny_config

  from gatoms_jax import pipeline
  from gatoms_jax.demo.sources import load_documents

  root = tmp_path_factory.mktemp('tiny')
  config = tiny_config(
    str(root / 'results'), tiny_tokenizer.save(str(root / 'tok'))
  )
  config.steering.behaviors = ('yes_no',)
  pipeline.run(config)
  run_dir = str(root / 'results' / 'tiny')
  return run_dir, {d.doc_id: d for d in load_documents(config.data)}


def _flat(text):
  return ' '.join(text.split())


def test_tiny_run_in_browser(browser, tiny_run, tmp_path):
  run_dir, docs = tiny_run
  path = os.path.join(run_dir, 'explorer.html')
  assert os.path.exists(path), 'the report stage writes explorer.html'
  with open(os.path.join(run_dir, 'projection', 'ids.json')) as f:
    ids = json.load(f)
  codes = np.load(os.path.join(run_dir, 'dictionary', 'codes.npy'))
  with open(os.path.join(run_dir, 'steering', 'sweeps.json')) as f:
    swept = [
      d for d in json.load(f)['yes_no']['directions'] if d.startswith('atom')
    ]
  swept_atom = int(swept[0][len('atom') :].split('+')[0])

  p = _Page(browser)
  page = p.page
  page.goto('file://' + path)
  rows = page.locator('#atoms-table tbody tr')
  assert rows.count() == codes.shape[1]  # all atoms fit on the first page

  # Sort by active documents: high to low, then low to high on a 2nd click.
  page.click('th[data-key="n_active"]')
  active = _column(page, 4)
  assert active == sorted(active, reverse=True)
  assert sorted(active) == sorted((codes != 0).sum(axis=0).tolist())
  page.click('th[data-key="n_active"]')
  assert _column(page, 4) == sorted(active)
  page.click('th[data-key="coherence"]')
  coherence = [c for c in _column(page, 3) if c is not None]
  assert coherence == sorted(coherence, reverse=True)

  # Filter by a keyword of the first atom that has one.
  keywords = page.locator('#atoms-table tbody tr td:nth-child(8)')
  labels = page.locator('#atoms-table tbody tr td:nth-child(6)')
  word = next(t for t in keywords.all_inner_texts() if t).split(', ')[0]
  page.fill('#atom-filter', word)
  shown = zip(keywords.all_inner_texts(), labels.all_inner_texts())
  shown = [f'{k} {label}' for k, label in shown]
  assert shown and all(word in t for t in shown)
  page.fill('#atom-filter', '')

  # Open the swept atom from the table.
  _navigate(
    page, f'#atoms-table tbody tr[data-atom="{swept_atom}"]', '#atom-title'
  )
  assert (
    page.locator('#atom-title').inner_text().startswith(f'Atom {swept_atom}')
  )
  col = codes[:, swept_atom]
  bars = page.locator('#histogram rect.hist-bar')
  counts = [
    int(bars.nth(i).get_attribute('data-count')) for i in range(bars.count())
  ]
  assert sum(counts) == np.count_nonzero(col)
  # Its top positive document is the largest code's, with its text.
  if col.max() > 0:
    top = int(np.argmax(col))
    card = page.locator('#top-positive .doc').first
    assert ids[top] in card.locator('.head').inner_text()
    answer = _flat(card.locator('.text.answer').inner_text())
    assert answer[:40] == _flat(docs[ids[top]].assistant_text)[:40]
    prompt = _flat(card.locator('.text.prompt').inner_text())
    assert prompt[:40] == _flat(docs[ids[top]].user_text)[:40]
  negatives = page.locator('#top-negative .doc').count()
  assert negatives == min(10, int((col < 0).sum()))
  # Dose-response: the atom's curve and the random control's.
  plot = page.locator('.steering svg').first
  assert plot.locator('polyline.atom-line').count() == 1
  assert plot.locator('polyline.control-line').count() >= 1
  assert page.locator('#kmeans').count() == 1
  page.screenshot(path=str(tmp_path / 'atom.png'), full_page=True)

  # Open a document from the atom page: the atoms it uses are its codes'.
  page.locator(
    '#top-positive .doc .head a, #top-negative .doc .head a'
  ).first.click()
  page.wait_for_selector('#doc-title')
  row = int(page.evaluate('location.hash').split('/')[-1])
  assert ids[row] in page.locator('#doc-title').inner_text()
  listed = page.locator('#doc-atoms tr').count() - 1  # minus the header
  assert listed == np.count_nonzero(codes[row])
  page.screenshot(path=str(tmp_path / 'document.png'), full_page=True)

  # Every document is reachable from the documents view.
  _navigate(page, '#nav-docs', '#doc-filter')
  page.fill('#doc-filter', ids[-1])
  _navigate(page, f'#docs-table tr[data-row="{len(ids) - 1}"]', '#doc-title')
  assert ids[-1] in page.locator('#doc-title').inner_text()
  _navigate(page, '#nav-run', '#stages-table tr')
  assert page.locator('#stages-table tr').count() > 1
  # The config is the run's (config.json is only written after the report).
  assert '"run_name": "tiny"' in page.locator('pre.config').inner_text()
  p.check_clean()
  assert os.path.getsize(tmp_path / 'atom.png') > 10_000


# True once the atom page of atom `a` is shown ('Atom 1' must not match 12).
_ATOM_PAGE_SHOWN = """(a) => {
  const t = document.querySelector('#atom-title');
  const head = 'Atom ' + a;
  return t !== null && t.textContent.startsWith(head)
    && !/[0-9]/.test(t.textContent.charAt(head.length));
}"""


def test_every_atom_page_shows_its_documents(browser, tiny_run):
  """Every atom is reachable by its address and lists its documents: as
  many cards as it has non-zero codes of each sign (10 per list page), the
  largest code's document first, with its answer's text."""
  run_dir, docs = tiny_run
  with open(os.path.join(run_dir, 'projection', 'ids.json')) as f:
    ids = json.load(f)
  codes = np.load(os.path.join(run_dir, 'dictionary', 'codes.npy'))
  p = _Page(browser)
  page = p.page
  page.goto('file://' + os.path.join(run_dir, 'explorer.html'))
  page.wait_for_selector('#atoms-table tbody tr')
  for atom in range(codes.shape[1]):
    page.evaluate(f"location.hash = '#/atom/{atom}'")
    page.wait_for_function(_ATOM_PAGE_SHOWN, arg=atom)
    col = codes[:, atom]
    for side, n in (
      ('positive', (col > 0).sum()),
      ('negative', (col < 0).sum()),
    ):
      cards = page.locator(f'#top-{side} .doc')
      assert cards.count() == min(10, int(n)), (atom, side)
    if col.max() > 0:
      card = page.locator('#top-positive .doc').first
      top = ids[int(np.argmax(col))]
      assert top in card.locator('.head').inner_text(), atom
      answer = _flat(card.locator('.text.answer').inner_text())
      assert answer and answer[:40] == _flat(docs[top].assistant_text)[:40]
  p.check_clean()


def test_paper_scale_in_browser(browser, paper_scale, tmp_path):
  path, documents, codes, ids = paper_scale
  p = _Page(browser)
  page = p.page
  t0 = time.perf_counter()
  page.goto('file://' + path)
  page.wait_for_selector('#atoms-table tbody tr')
  seconds = time.perf_counter() - t0
  print(
    f'paper-scale page to first table: {seconds:.2f} s '
    f'(load average {os.getloadavg()})'
  )
  assert page.locator('#atoms-table tbody tr').count() == 50  # one page
  page.click('.pager .next')
  assert page.locator('#atoms-table tbody tr').count() == 50
  first = page.locator('#atoms-table tbody tr').first
  atom = int(first.get_attribute('data-atom'))
  first.click()
  page.wait_for_selector('#top-positive .doc')
  assert page.locator('#top-positive .doc').count() == 10  # one list page
  _navigate(page, '#nav-docs', '#docs-table tr[data-row]')
  assert page.locator('#docs-table tr[data-row]').count() == 50
  _navigate(page, '#docs-table tr[data-row="0"]', '.text.prompt')
  # The hostile document's text is shown as text, not markup.
  assert page.locator('.text.prompt').inner_text() == _HOSTILE
  assert page.locator('img').count() == 0
  page.screenshot(path=str(tmp_path / 'paper_scale.png'))
  p.check_clean()
  assert np.count_nonzero(codes[:, atom]) > 10


def test_page_over_the_limit_gets_shorter_excerpts(tmp_path):
  run, documents, codes, ids = _synthetic_run(tmp_path, 40, 6, nnz_per_doc=2)
  full = explorer.write_explorer(run, documents, path=str(tmp_path / 'a.html'))
  size = os.path.getsize(full)
  # Whole documents at this size: ~1.5 kB of text each.
  limit = size - 20_000
  cut = explorer.write_explorer(
    run, documents, path=str(tmp_path / 'b.html'), max_bytes=limit
  )
  assert os.path.getsize(cut) <= limit
  with open(full, encoding='utf-8') as f:
    long_answers = _inline_data(f.read())['docs']['answer']
  with open(cut, encoding='utf-8') as f:
    short_answers = _inline_data(f.read())['docs']['answer']
  for long, short in zip(long_answers[1:], short_answers[1:]):
    assert short.endswith('…') and long.startswith(short[:-1])
