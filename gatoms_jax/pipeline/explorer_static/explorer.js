// Atom explorer: renders the inline JSON of one run (gatoms_jax/pipeline/
// explorer.py) into tables and SVG plots. Plain JS, no libraries, no network.
// All data text goes in through textContent, never innerHTML, so document
// text cannot inject markup.
'use strict';

const DATA = JSON.parse(document.getElementById('explorer-data').textContent);
// The SVG namespace is a name, not a resource; built in parts so the file
// holds no literal scheme-and-slashes text.
const SVG_NS = ['http:', '', 'www.w3.org', '2000', 'svg'].join('/');
const DOCS = DATA.docs;
const N_DOCS = DOCS.id.length;
const ATOMS = DATA.atoms;
const ATOM_BY_ID = new Map(ATOMS.map((a) => [a.atom, a]));
const PAGE = 50; // rows per table page
const DOC_PAGE = 10; // documents per list page on an atom page

// ---------------------------------------------------------------- helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'onclick' || k === 'oninput') node[k] = v;
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–';
  if (typeof x !== 'number') return String(x);
  if (Number.isInteger(x)) return String(x);
  return x.toFixed(digits);
}

function link(hash, text) {
  return el('a', { href: hash }, text);
}

function atomLink(k) {
  return link('#/atom/' + k, 'atom ' + k);
}

function docLink(row) {
  return link('#/doc/' + row, DOCS.id[row]);
}

// Prev/next buttons over `total` items; calls draw(page) on change.
function pager(total, size, page, draw) {
  const pages = Math.max(1, Math.ceil(total / size));
  const prev = el('button', { class: 'prev', onclick: () => draw(page - 1) }, '‹ prev');
  const next = el('button', { class: 'next', onclick: () => draw(page + 1) }, 'next ›');
  prev.disabled = page <= 0;
  next.disabled = page >= pages - 1;
  return el('span', { class: 'pager' }, prev, ` page ${page + 1} of ${pages} (${total}) `, next);
}

// ------------------------------------------------------------------ plots

// Axis-aligned frame with ticks; returns {svg, x(v), y(v)} for drawing.
function frame(width, height, xr, yr, xlabel, ylabel) {
  const m = { l: 48, r: 24, t: 10, b: 36 };
  const svg = svgEl('svg', { width, height, viewBox: `0 0 ${width} ${height}` });
  const [x0, x1] = xr[0] === xr[1] ? [xr[0] - 1, xr[1] + 1] : xr;
  const [y0, y1] = yr[0] === yr[1] ? [yr[0] - 1, yr[1] + 1] : yr;
  const x = (v) => m.l + ((v - x0) / (x1 - x0)) * (width - m.l - m.r);
  const y = (v) => height - m.b - ((v - y0) / (y1 - y0)) * (height - m.t - m.b);
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4;
    svg.append(svgEl('line', { class: 'grid', x1: m.l, x2: width - m.r, y1: y(yv), y2: y(yv) }));
    svg.append(svgEl('text', { x: m.l - 4, y: y(yv) + 4, 'text-anchor': 'end' }, tick(yv)));
    const xv = x0 + ((x1 - x0) * i) / 4;
    svg.append(svgEl('text', { x: x(xv), y: height - m.b + 14, 'text-anchor': 'middle' }, tick(xv)));
  }
  svg.append(svgEl('line', { class: 'axis', x1: m.l, x2: m.l, y1: m.t, y2: height - m.b }));
  svg.append(svgEl('line', { class: 'axis', x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
  svg.append(svgEl('text', { x: (m.l + width - m.r) / 2, y: height - 4, 'text-anchor': 'middle' }, xlabel));
  svg.append(svgEl('text', { x: 12, y: (m.t + height - m.b) / 2, 'text-anchor': 'middle',
    transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, ylabel));
  return { svg, x, y };
}

function tick(v) {
  const a = Math.abs(v);
  if (a === 0) return '0';
  if (a >= 1000 || a < 0.01) return v.toExponential(1);
  return String(+v.toPrecision(3));
}

// Histogram of an atom's non-zero codes.
function histogram(values, bins = 30) {
  const lo = values.reduce((m, v) => Math.min(m, v), 0);
  const hi = values.reduce((m, v) => Math.max(m, v), 0);
  const width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))]++;
  const f = frame(460, 200, [lo, hi], [0, Math.max(...counts, 1)], 'code value (non-zero codes only)', 'documents');
  counts.forEach((c, i) => {
    if (!c) return;
    const v = lo + i * width;
    f.svg.append(svgEl('rect', {
      class: 'hist-bar', 'data-count': c, x: f.x(v) + 0.5, y: f.y(c), width: Math.max(1, f.x(v + width) - f.x(v) - 1),
      height: f.y(0) - f.y(c), fill: v + width / 2 >= 0 ? '#2f7d4f' : '#b3412f',
    }));
  });
  f.svg.setAttribute('id', 'histogram');
  return f.svg;
}

// Dose-response: detection rate against signed KL level, baseline at 0.
function doseResponse(sweep, dname) {
  const lines = Object.entries(sweep.directions).filter(([n, d]) => n === dname || !d.atoms);
  const xs = [0];
  for (const [, d] of lines) for (const p of d.points) xs.push(p.level);
  const f = frame(460, 220, [Math.min(...xs), Math.max(...xs)], [0, 100],
    'KL level (away < 0 < toward)', 'detection rate (%)');
  if (sweep.baseline !== null) {
    f.svg.append(svgEl('line', { x1: f.x(Math.min(...xs)), x2: f.x(Math.max(...xs)),
      y1: f.y(sweep.baseline), y2: f.y(sweep.baseline), stroke: '#000', 'stroke-dasharray': '2 3' }));
  }
  lines.forEach(([name, d], i) => {
    const pts = [{ level: 0, rate: sweep.baseline }, ...d.points]
      .filter((p) => p.rate !== null).sort((a, b) => a.level - b.level);
    const isAtom = !!d.atoms;
    const color = isAtom ? '#2f5fb3' : '#9aa3b2';
    f.svg.append(svgEl('polyline', {
      points: pts.map((p) => `${f.x(p.level)},${f.y(p.rate)}`).join(' '),
      fill: 'none', stroke: color, 'stroke-width': isAtom ? 2 : 1.2,
      'stroke-dasharray': isAtom ? '' : '5 3', class: isAtom ? 'atom-line' : 'control-line',
    }));
    for (const p of pts) {
      f.svg.append(svgEl('circle', { cx: f.x(p.level), cy: f.y(p.rate), r: isAtom ? 3 : 2, fill: color }));
    }
    f.svg.append(svgEl('text', { x: 56, y: 22 + 13 * i, fill: color }, (isAtom ? '— ' : '- - ') + name));
  });
  return f.svg;
}

// Horizontal bars of label counts.
function labelBars(counts) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const max = Math.max(...entries.map((e) => e[1]), 1);
  const total = entries.reduce((s, e) => s + e[1], 0);
  return el('table', { id: 'label-composition' }, entries.map(([label, n]) =>
    el('tr', {}, el('td', {}, label),
      el('td', { class: 'num' }, n), el('td', { class: 'num' }, fmt((100 * n) / total, 0) + '%'),
      el('td', { style: 'width:60%' }, el('span', { class: 'bar', style: `width:${(100 * n) / max}%` })))));
}

// ------------------------------------------------------------ atoms table

const COLUMNS = [
  { key: 'rank', label: 'rank', num: true },
  { key: 'atom', label: 'atom', num: true },
  { key: 'coherence', label: 'coherence', num: true,
    title: 'mean pairwise cosine of the raw gradients of the top documents' },
  { key: 'n_active', label: 'active docs', num: true },
  { key: 'purity', label: 'purity', num: true, title: 'share of the majority label among the top documents' },
  { key: 'majority_label', label: 'majority label' },
  { key: 'steering_effect', label: 'steering effect (pp)', num: true,
    title: 'largest margin of the rate shift over the random controls at the same KL level, '
      + 'over the swept behaviours' },
  { key: 'keywords', label: 'keywords' },
];
const tableState = { key: 'rank', dir: 1, filter: '', page: 0 };

function atomMatches(a, q) {
  if (!q) return true;
  const hay = [a.keywords.join(' '), a.majority_label || '', 'atom ' + a.atom].join(' ').toLowerCase();
  return q.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
}

function sortedAtoms() {
  const { key, dir } = tableState;
  const rows = ATOMS.filter((a) => atomMatches(a, tableState.filter));
  const val = (a) => (key === 'keywords' ? a.keywords.join(' ') : a[key]);
  return rows.sort((a, b) => {
    const va = val(a), vb = val(b);
    // Missing values always last, whatever the direction.
    if (va === null || va === undefined) return vb === null || vb === undefined ? a.rank - b.rank : 1;
    if (vb === null || vb === undefined) return -1;
    if (va < vb) return -dir;
    if (va > vb) return dir;
    return a.rank - b.rank;
  });
}

function viewAtoms(view) {
  const summary = DATA.run.summary || {};
  view.append(el('h1', {}, `${ATOMS.length} atoms over ${N_DOCS} documents`));
  view.append(el('p', { class: 'muted' },
    'Ranked by coherence. Click a column to sort, a row to open the atom. ',
    summary.n_label_values_recovered !== undefined && summary.n_label_values
      ? `Label values recovered: ${summary.n_label_values_recovered} of ${summary.n_label_values} `
        + `(k-means: ${summary.kmeans_n_label_values_recovered}).`
      : ''));
  const input = el('input', { id: 'atom-filter', type: 'search', placeholder: 'filter by keyword or label…' });
  input.value = tableState.filter;
  const body = el('div');
  input.oninput = () => { tableState.filter = input.value; tableState.page = 0; draw(); };
  view.append(el('div', { class: 'toolbar' }, input), body);

  function draw() {
    const rows = sortedAtoms();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    tableState.page = Math.min(Math.max(0, tableState.page), pages - 1);
    const page = rows.slice(tableState.page * PAGE, (tableState.page + 1) * PAGE);
    const head = el('tr', {}, COLUMNS.map((c) => {
      const order = tableState.dir > 0 ? 'sorted-asc' : 'sorted-desc';
      const cls = ['sortable', c.num ? 'num' : '', tableState.key === c.key ? order : ''];
      return el('th', { class: cls.join(' '), 'data-key': c.key, title: c.title || null, onclick: () => {
        // Numbers start high-to-low (except rank/atom), text A-Z.
        const first = c.num && c.key !== 'rank' && c.key !== 'atom' ? -1 : 1;
        tableState.dir = tableState.key === c.key ? -tableState.dir : first;
        tableState.key = c.key;
        tableState.page = 0;
        draw();
      } }, c.label);
    }));
    const open = (a) => () => { location.hash = '#/atom/' + a.atom; };
    const effect = (a) => (a.steering_effect === null ? '–' : fmt(a.steering_effect, 1) + (a.steers ? ' ✓' : ''));
    const trs = page.map((a) => el('tr', { class: 'link', 'data-atom': a.atom, onclick: open(a) },
      el('td', { class: 'num' }, a.rank), el('td', { class: 'num' }, a.atom),
      el('td', { class: 'num' }, fmt(a.coherence)), el('td', { class: 'num' }, a.n_active),
      el('td', { class: 'num' }, fmt(a.purity, 2)), el('td', {}, a.majority_label || '–'),
      el('td', { class: 'num' }, effect(a)),
      el('td', {}, a.keywords.join(', '))));
    const go = (p) => { tableState.page = p; draw(); };
    body.replaceChildren(
      el('div', { class: 'toolbar' }, pager(rows.length, PAGE, tableState.page, go)),
      el('table', { id: 'atoms-table' }, el('thead', {}, head), el('tbody', {}, trs)));
  }
  draw();
}

// --------------------------------------------------------------- atom page

function docCard(row, value) {
  const label = DOCS.label ? DOCS.label[row] : null;
  return el('div', { class: 'doc card', 'data-row': row },
    el('div', { class: 'head' },
      el('span', { class: 'code ' + (value > 0 ? 'pos' : 'neg') }, (value > 0 ? '+' : '') + value),
      docLink(row), label ? el('span', { class: 'chip' }, label) : null),
    DOCS.prompt[row] ? el('div', { class: 'text prompt' }, DOCS.prompt[row]) : null,
    DOCS.answer[row] ? el('div', { class: 'text answer' }, DOCS.answer[row])
      : el('div', { class: 'muted' }, '(no text: documents were not available to the report)'));
}

// A paged list of (row, value) pairs.
function docList(id, pairs) {
  const box = el('div', { id });
  function draw(page) {
    const items = pairs.slice(page * DOC_PAGE, (page + 1) * DOC_PAGE);
    box.replaceChildren(el('div', {}, pairs.length > DOC_PAGE ? pager(pairs.length, DOC_PAGE, page, draw) : '',
      items.length ? items.map(([r, v]) => docCard(r, v)) : el('p', { class: 'muted' }, 'none')));
  }
  draw(0);
  return box;
}

function viewAtom(view, k) {
  const a = ATOM_BY_ID.get(k);
  if (!a) { view.append(el('p', {}, `No atom ${k}.`)); return; }
  const i = ATOMS.indexOf(a);
  view.append(el('div', { class: 'toolbar' },
    i > 0 ? link('#/atom/' + ATOMS[i - 1].atom, '‹ previous by coherence') : '',
    i < ATOMS.length - 1 ? link('#/atom/' + ATOMS[i + 1].atom, 'next by coherence ›') : ''));
  view.append(el('h1', { id: 'atom-title' }, `Atom ${a.atom}`,
    el('span', { class: 'muted' }, ` (rank ${a.rank} of ${ATOMS.length} by coherence)`)));
  const stats = [['coherence', fmt(a.coherence)], ['active documents', `${a.n_active} of ${N_DOCS}`],
    ['majority label', a.majority_label ? `${a.majority_label} (${fmt(a.purity, 2)})` : '–'],
    ['steering effect (pp)', a.steering_effect === null ? 'not swept'
      : fmt(a.steering_effect, 1) + (a.steers ? ' (steers)' : '')]];
  view.append(el('div', { class: 'row' }, stats.map(([name, v]) =>
    el('div', { class: 'card stat' }, el('span', { class: 'muted' }, name), el('b', {}, v)))));
  view.append(el('p', { id: 'keywords' }, a.keywords.length
    ? a.keywords.map((w) => el('span', { class: 'chip' }, w))
    : el('span', { class: 'muted' }, 'no keywords')));

  const pairs = a.rows.map((r, j) => [r, a.values[j]]);
  const left = el('div', {}, el('h2', {}, 'Codes'),
    a.values.length ? histogram(a.values) : el('p', { class: 'muted' }, 'no non-zero codes'),
    el('p', { class: 'muted' },
      `${a.n_active} non-zero codes; the other ${N_DOCS - a.n_active} documents have code 0.`));
  const right = el('div', {});
  if (DOCS.label) {
    const counts = {};
    for (const r of a.rows) counts[DOCS.label[r]] = (counts[DOCS.label[r]] || 0) + 1;
    right.append(el('h2', {}, 'Label composition (active documents)'),
      a.rows.length ? labelBars(counts) : el('p', { class: 'muted' }, 'none'),
      el('p', { class: 'muted' }, `Purity ${fmt(a.purity, 2)} is read on the top ${DATA.top_n || ''} `
        + 'documents by |code|; labels are never used by the method.'));
  }
  right.append(el('h2', {}, 'Closest k-means cluster'), kmeansBox(a));
  view.append(el('div', { class: 'cols' }, left, right));

  if (a.sweeps.length) {
    view.append(el('h2', {}, 'Steering'));
    view.append(el('p', { class: 'muted' }, 'Detection rate of the behaviour against the KL level '
      + 'the push was calibrated to (solid: this atom\'s direction, dashed: random directions '
      + 'at the same KL levels, dotted: unsteered).'));
    for (const s of a.sweeps) view.append(steeringBox(s));
  }
  view.append(el('div', { class: 'cols' },
    el('div', {}, el('h2', {}, 'Top positive documents'),
      docList('top-positive', pairs.filter((p) => p[1] > 0))),
    el('div', {}, el('h2', {}, 'Top negative documents'),
      docList('top-negative', pairs.filter((p) => p[1] < 0).reverse()))));
}

function kmeansBox(a) {
  const km = a.kmeans;
  if (!km) return el('p', { class: 'muted' }, 'no k-means clusters in this run');
  const c = DATA.kmeans.clusters[String(km.cluster)] || {};
  return el('div', { id: 'kmeans', class: 'card' },
    el('div', {}, el('b', {}, `cluster ${km.cluster}`),
      ` shares ${km.overlap} documents (Jaccard ${fmt(km.jaccard, 2)}, over cluster ${DATA.kmeans.basis})`),
    el('div', { class: 'muted' }, `size ${fmt(c.size)}, coherence ${fmt(c.coherence)}, `
      + `majority label ${c.majority_label || '–'} (${fmt(c.purity, 2)})`),
    el('div', {}, (c.keywords || []).map((w) => el('span', { class: 'chip' }, w))));
}

function steeringBox(s) {
  const sweep = DATA.sweeps[s.behavior];
  const d = sweep.directions[s.direction];
  const others = d.atoms;
  const verdict = sweep.verdicts[s.direction] || {};
  const num = (x) => el('td', { class: 'num' }, x);
  const passes = (p) => (p.passed === null || p.passed === undefined ? '–' : p.passed ? 'yes' : 'no');
  const rows = d.points.map((p) => el('tr', {},
    num(fmt(p.level, 2)), num(p.coefficient === null ? '–' : tick(p.coefficient)),
    num(fmt(p.rate, 1)), num(fmt(p.kl)), num(fmt(p.degenerate, 2)), el('td', {}, passes(p)),
    el('td', { class: 'samples' }, p.samples.join('\n'))));
  const header = ['level', 'c', 'rate %', 'KL', 'degenerate', 'passes', 'sample outputs'];
  return el('div', { class: 'card steering' },
    el('b', {}, s.behavior), ` — direction ${s.direction}`,
    others.length > 1
      ? el('span', { class: 'muted' }, ' (the matched atoms summed: ', others.map((x) => [atomLink(x), ' ']), ')')
      : '',
    el('span', {}, verdict.steers ? ' — steers beyond random' : ' — does not beat random'),
    el('div', { class: 'row' }, doseResponse(sweep, s.direction),
      el('table', { style: 'width:auto;flex:1' },
        el('tr', {}, header.map((h) => el('th', {}, h))),
        el('tr', {}, num('0'), num('0'), num(fmt(sweep.baseline, 1)), num('0'), el('td', {}, ''),
          el('td', {}, 'baseline'), el('td', { class: 'samples' }, sweep.baseline_samples.join('\n'))),
        rows)));
}

// ---------------------------------------------------------- documents

let DOC_ATOMS = null; // row -> [[atom, value]], built on first use

function docAtoms() {
  if (DOC_ATOMS) return DOC_ATOMS;
  DOC_ATOMS = Array.from({ length: N_DOCS }, () => []);
  for (const a of ATOMS) a.rows.forEach((r, j) => DOC_ATOMS[r].push([a.atom, a.values[j]]));
  for (const list of DOC_ATOMS) list.sort((x, y) => Math.abs(y[1]) - Math.abs(x[1]));
  return DOC_ATOMS;
}

const docState = { filter: '', page: 0 };

function viewDocs(view) {
  const used = docAtoms();
  view.append(el('h1', {}, `${N_DOCS} documents`));
  if (DOCS.n_missing_text) {
    view.append(el('p', { class: 'muted' },
      `${DOCS.n_missing_text} documents have no text: the report could not read them.`));
  }
  const input = el('input', { id: 'doc-filter', type: 'search', placeholder: 'filter by id, label or text…' });
  input.value = docState.filter;
  const body = el('div');
  input.oninput = () => { docState.filter = input.value; docState.page = 0; draw(); };
  view.append(el('div', { class: 'toolbar' }, input), body);
  function draw() {
    const q = docState.filter.toLowerCase();
    const rows = [];
    for (let r = 0; r < N_DOCS; r++) {
      const hay = [DOCS.id[r], DOCS.label ? DOCS.label[r] : '', DOCS.prompt[r], DOCS.answer[r]];
      if (!q || hay.join(' ').toLowerCase().includes(q)) rows.push(r);
    }
    const page = rows.slice(docState.page * PAGE, (docState.page + 1) * PAGE);
    body.replaceChildren(
      el('div', { class: 'toolbar' }, pager(rows.length, PAGE, docState.page, (p) => { docState.page = p; draw(); })),
      el('table', { id: 'docs-table' },
        el('tr', {}, ['document', 'label', 'atoms used', 'prompt'].map((h) => el('th', {}, h))),
        page.map((r) => el('tr', { class: 'link', 'data-row': r, onclick: () => { location.hash = '#/doc/' + r; } },
          el('td', {}, DOCS.id[r]), el('td', {}, DOCS.label ? DOCS.label[r] : '–'),
          el('td', { class: 'num' }, used[r].length), el('td', {}, (DOCS.prompt[r] || '').slice(0, 120))))));
  }
  draw();
}

function viewDoc(view, row) {
  if (!(row >= 0 && row < N_DOCS)) { view.append(el('p', {}, `No document ${row}.`)); return; }
  const used = docAtoms()[row];
  view.append(el('h1', { id: 'doc-title' }, `Document ${DOCS.id[row]}`));
  view.append(el('p', {}, DOCS.label ? el('span', { class: 'chip' }, 'label: ' + DOCS.label[row]) : '',
    DOCS.cluster ? el('span', { class: 'chip' }, 'k-means cluster ' + DOCS.cluster[row]) : ''));
  view.append(el('div', { class: 'cols' },
    el('div', {}, el('h2', {}, 'Prompt'), el('div', { class: 'text prompt' }, DOCS.prompt[row] || '–'),
      el('h2', {}, 'Answer'), el('div', { class: 'text answer' }, DOCS.answer[row] || '–')),
    el('div', {}, el('h2', {}, `Atoms it uses (${used.length})`),
      el('table', { id: 'doc-atoms' },
        el('tr', {}, ['atom', 'code', 'coherence', 'majority label', 'keywords'].map((h) => el('th', {}, h))),
        used.map(([k, v]) => {
          const a = ATOM_BY_ID.get(k);
          return el('tr', { class: 'link', onclick: () => { location.hash = '#/atom/' + k; } },
            el('td', {}, atomLink(k)), el('td', { class: 'num' }, v), el('td', { class: 'num' }, fmt(a.coherence)),
            el('td', {}, a.majority_label || '–'), el('td', {}, a.keywords.slice(0, 5).join(', ')));
        })))));
}

// ---------------------------------------------------------------- run

function viewRun(view) {
  const run = DATA.run;
  view.append(el('h1', {}, `Run ${run.name}`));
  const summary = run.summary || {};
  const keys = Object.keys(summary).filter((k) => summary[k] === null || typeof summary[k] !== 'object');
  view.append(el('h2', {}, 'Summary'), el('table', { id: 'summary-table' },
    keys.map((k) => el('tr', {}, el('td', {}, k), el('td', { class: 'num' }, fmt(summary[k]))))));
  view.append(el('h2', {}, 'Stages'), el('table', { id: 'stages-table' },
    el('tr', {}, ['stage', 'seconds', 'finished', 'results'].map((h) => el('th', {}, h))),
    run.stages.map((s) => el('tr', {}, el('td', {}, s.stage), el('td', { class: 'num' }, fmt(s.seconds, 1)),
      el('td', {}, s.finished || '–'),
      el('td', { class: 'muted' }, Object.entries(s.results).map(([k, v]) => `${k}=${fmt(v)}`).join(', '))))));
  view.append(el('h2', {}, 'Config'), el('pre', { class: 'config' }, JSON.stringify(run.config, null, 1)));
}

// -------------------------------------------------------------- routing

function route() {
  const view = document.getElementById('view');
  view.replaceChildren();
  const [, name, arg] = (location.hash || '#/atoms').split('/');
  for (const n of ['atoms', 'docs', 'run']) {
    const active = name === n || (n === 'atoms' && name === 'atom') || (n === 'docs' && name === 'doc');
    document.getElementById('nav-' + n).classList.toggle('active', active);
  }
  if (name === 'atom') viewAtom(view, Number(arg));
  else if (name === 'docs') viewDocs(view);
  else if (name === 'doc') viewDoc(view, Number(arg));
  else if (name === 'run') viewRun(view);
  else viewAtoms(view);
  window.scrollTo(0, 0);
}

document.getElementById('run-name').textContent = DATA.run.name;
window.addEventListener('hashchange', route);
route();
