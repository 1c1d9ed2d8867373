"""The demo on a mixture where 20% of the documents teach two task types.

Each compositional document combines two of the mixture's task types in one
answer (demo/mixture_compositions.py: a yes/no verdict as bullets, code with
numbered steps, an email asking for missing input, arithmetic as bullets, a
word problem in numbered steps). The atoms stage then reports, by the same
measure for atoms and k-means, how often both task types of such a document
are named by the units it uses (`both_labels_recovered_fraction`), and the
single-task recovery apart (`n_single_label_values_recovered`):

  python -m experiments.pipeline --config=configs/smollm2_compositional.py

Everything else is the demo's (configs/smollm2_demo.py).
"""

from configs import smollm2_demo


def get_config():
  c = smollm2_demo.get_config()
  c.run_name = 'compositional'
  c.data.compositional_fraction = 0.2
  return c
