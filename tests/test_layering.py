"""The package's import graph runs one way: core <- method <- pipeline.

Layers (lowest first): `gatoms_jax.core` (model port, loaders, LoRA, data,
sharding, artefact I/O), `gatoms_jax.method` (the Gradient Atoms method),
`gatoms_jax.demo` (the generated mixture and built-in prompt sets: content,
not method), `gatoms_jax.pipeline` (stages, manifests, report), and the absl
apps in `experiments/`. A module may import its own layer or lower ones; the
package root only re-exports. Imports are read from the source with `ast`,
including those inside functions, so a lazy import cannot hide a cycle.
"""

import ast
import os
import pathlib

from absl.testing import absltest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'gatoms_jax'
# Rank of each layer; an import must not go to a higher rank.
LAYERS = {'core': 0, 'demo': 1, 'method': 2, 'pipeline': 3}


def module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix('')
  parts = list(rel.parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def imported_modules(path: pathlib.Path, known: set) -> set:
  """Project modules that `path` imports (resolved to existing modules)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  this = module_name(path)
  package = this if path.name == '__init__.py' else this.rsplit('.', 1)[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[: len(anchor) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      names = [f'{base}.{a.name}' for a in node.names] + [base]
    else:
      continue
    for name in names:
      # The longest known module that prefixes the name ('a.b.func' -> 'a.b').
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name and name != this:
        found.add(name)
  return found


def layer_of(module: str):
  parts = module.split('.')
  if parts[0] == 'experiments':
    return 'experiments', 4
  if len(parts) < 2 or parts[0] != 'gatoms_jax':
    return None, None
  return parts[1], LAYERS.get(parts[1])


def import_graph(root: pathlib.Path = ROOT) -> dict:
  files = sorted(PACKAGE.rglob('*.py')) + sorted(
    (ROOT / 'experiments').glob('*.py')
  )
  known = {module_name(f) for f in files}
  return {module_name(f): imported_modules(f, known) for f in files}


def violations(graph: dict) -> list[str]:
  """Upward imports across layers, library -> pipeline/experiments, cycles."""
  problems = []
  for module, imports in graph.items():
    if module == 'gatoms_jax':
      continue  # the root re-exports the public API of every layer
    name, rank = layer_of(module)
    if module.startswith('gatoms_jax.') and rank is None:
      problems.append(f'{module}: outside the layers {sorted(LAYERS)}')
      continue
    for target in imports:
      if target == 'gatoms_jax':
        # Apps use the public API; inside the library it would be a cycle.
        if module.startswith('gatoms_jax.'):
          problems.append(f'{module} imports the package root')
        continue
      target_name, target_rank = layer_of(target)
      if target_rank is not None and rank is not None and target_rank > rank:
        problems.append(f'{module} ({name}) imports {target} ({target_name})')
  # Cycles among modules (a package __init__ importing its children is not
  # an edge back: a child importing its own package would be).
  state = {}

  def visit(node, stack):
    state[node] = 1
    for nxt in sorted(graph.get(node, ())):
      if nxt == 'gatoms_jax' or node.startswith(nxt + '.'):
        continue
      if state.get(nxt) == 1:
        cycle = stack[stack.index(nxt) :] + [nxt]
        problems.append('cycle: ' + ' -> '.join(cycle))
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  return problems


class LayeringTest(absltest.TestCase):
  def test_package_imports_run_one_way(self):
    problems = violations(import_graph())
    self.assertEqual(problems, [], '\n'.join(problems))

  def test_detects_an_upward_import(self):
    graph = import_graph()
    graph['gatoms_jax.core.store'] = graph['gatoms_jax.core.store'] | {
      'gatoms_jax.pipeline.manifest'
    }
    self.assertTrue(
      any('core.store' in p for p in violations(graph)), violations(graph)
    )

  def test_detects_a_cycle(self):
    graph = {'gatoms_jax.core.a': {'gatoms_jax.core.b'}}
    graph['gatoms_jax.core.b'] = {'gatoms_jax.core.a'}
    self.assertTrue(any(p.startswith('cycle') for p in violations(graph)))

  def test_every_module_is_in_a_layer(self):
    top = [
      p.name
      for p in PACKAGE.iterdir()
      if not p.name.startswith('_') and p.name != '__pycache__'
    ]
    self.assertEqual(sorted(top), sorted(LAYERS), os.listdir(PACKAGE))


if __name__ == '__main__':
  absltest.main()
