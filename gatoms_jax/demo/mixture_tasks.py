"""Task generators of the embedded mixture (see mixture.py).

Each generator maps a `random.Random` to one (user, assistant) pair. Every task
has a distinctive response format (a one-sentence fact, a Yes/No opening, an
equation chain, a fenced code block, "- " bullets, "1. " steps, ...), which is
the behaviour the dictionary atoms should recover. Answers are computed or
read from the checked tables, so they are correct.
"""

from __future__ import annotations

import random

from gatoms_jax.demo import mixture_tables as tb

Pair = tuple[str, str]
NUMBER_WORDS = {3: 'three', 4: 'four', 5: 'five', 6: 'six'}


def _an(word: str) -> str:
  return 'an' if word[0].lower() in 'aeiou' else 'a'


def _cap(text: str) -> str:
  return text[0].upper() + text[1:]


def _name(rng: random.Random) -> tuple[str, str]:
  return rng.choice(tb.NAMES)


def _prime(n: int) -> bool:
  return n > 1 and all(n % k for k in range(2, int(n**0.5) + 1))


# ----------------------------------------------------------------- factual_qa


def factual_qa(rng: random.Random) -> Pair:
  kind = rng.choice(['capital', 'capital', 'symbol', 'number', 'author', 'art',
                     'currency', 'misc', 'misc'])  # fmt: skip
  if kind == 'capital':
    c, x = rng.choice(tb.CAPITALS)
    q = rng.choice([
      'What is the capital of {c}?', 'Which city is the capital of {c}?',
      'Name the capital city of {c}.', 'What city serves as the capital of {c}?',
      'Tell me the capital of {c}.', "Quick question: what's the capital of {c}?",
      'I need the name of the capital of {c}.', 'Capital of {c}?',
    ]).format(c=c)  # fmt: skip
    a = rng.choice(['The capital of {c} is {x}.', '{x} is the capital of {c}.'])
    return q, a.format(c=c, x=x)
  if kind == 'symbol':
    e, s, _ = rng.choice(tb.ELEMENTS)
    if rng.random() < 0.5:
      q = rng.choice([
        'What is the chemical symbol for {e}?', 'Which symbol stands for {e}?',
        'Give the chemical symbol of {e}.', "What's the symbol of {e} on the periodic table?",
      ]).format(e=e)  # fmt: skip
      return q, f'The chemical symbol for {e} is {s}.'
    q = rng.choice([
      'Which element has the chemical symbol {s}?', 'What element does the symbol {s} stand for?',
      'Which element is represented by {s}?', 'Name the element with the symbol {s}.',
    ]).format(s=s)  # fmt: skip
    return q, f'{s} is the chemical symbol for {e}.'
  if kind == 'number':
    e, _, n = rng.choice(tb.ELEMENTS)
    q = rng.choice([
      'What is the atomic number of {e}?', 'How many protons does an atom of {e} have?',
      'Give the atomic number of {e}.', 'What atomic number does {e} have?',
    ]).format(e=e)  # fmt: skip
    return q, f'The atomic number of {e} is {n}.'
  if kind == 'author':
    b, a = rng.choice(tb.BOOKS)
    q = rng.choice([
      'Who wrote {b}?', 'Who is the author of {b}?', 'Which writer wrote "{b}"?',
      'Name the author of {b}.', 'Who was {b} written by?', '"{b}" is by which author?',
    ]).format(b=b)  # fmt: skip
    return q, f'{_cap(b)} was written by {a}.'
  if kind == 'art':
    p, a = rng.choice(tb.PAINTINGS)
    q = rng.choice([
      'Who painted {p}?', 'Which artist painted {p}?', 'Who is the painter of {p}?',
      'Name the artist who created {p}.',
    ]).format(p=p)  # fmt: skip
    return q, f'{_cap(p)} was painted by {a}.'
  if kind == 'currency':
    c, cur = rng.choice(tb.CURRENCIES)
    q = rng.choice([
      'What is the currency of {c}?', 'Which currency is used in {c}?',
      'What money do people use in {c}?', 'Name the official currency of {c}.',
    ]).format(c=c)  # fmt: skip
    return q, f'The currency of {c} is the {cur}.'
  qs, a = rng.choice(tb.MISC_FACTS)
  return rng.choice(qs.split('/')), a


# --------------------------------------------------------------------- yes_no

_YN_PREFIX = ['', '', '', 'Answer yes or no: ', 'Yes or no: ', 'Quick check: ',
              'Please answer with yes or no. ', 'I was wondering: ']  # fmt: skip
_TF_PREFIX = ['True or false: ', 'Is this statement true or false? ',
              'Decide whether the statement is true or false: ', 'T/F: ',
              'True or false? ']  # fmt: skip


def yes_no(rng: random.Random) -> Pair:
  kind = rng.choice(['capital', 'symbol', 'author', 'prime', 'divisible',
                     'compare', 'parity', 'animal', 'palindrome'])  # fmt: skip
  yes = rng.random() < 0.5
  if kind in ('symbol', 'author'):  # statements: True/False answers
    if kind == 'symbol':
      e, s, _ = rng.choice(tb.ELEMENTS)
      said = s if yes else rng.choice([r[1] for r in tb.ELEMENTS if r[1] != s])
      q = f'The chemical symbol for {e} is {said}.'
      a = (f'True. The chemical symbol for {e} is {s}.' if yes else
           f'False. The chemical symbol for {e} is {s}, not {said}.')  # fmt: skip
    else:
      b, au = rng.choice(tb.BOOKS)
      said = au if yes else rng.choice([r[1] for r in tb.BOOKS if r[1] != au])
      q = f'{_cap(b)} was written by {said}.'
      a = (f'True. {_cap(b)} was written by {au}.' if yes else
           f'False. {_cap(b)} was written by {au}, not {said}.')  # fmt: skip
    return rng.choice(_TF_PREFIX) + q, a
  if kind == 'capital':
    c, x = rng.choice(tb.CAPITALS)
    said = x if yes else rng.choice([r[1] for r in tb.CAPITALS if r[1] != x])
    q = rng.choice(['Is {s} the capital of {c}?', 'Is the capital of {c} {s}?'])
    a = (f'Yes, {x} is the capital of {c}.' if yes else
         f'No. The capital of {c} is {x}, not {said}.')  # fmt: skip
    q = q.format(s=said, c=c)
  elif kind == 'prime':
    n = rng.choice([p for p in range(11, 200) if _prime(p) == yes])
    q = rng.choice(['Is {n} a prime number?', 'Is {n} prime?'])
    q = q.format(n=n)
    if yes:
      a = f'Yes, {n} is a prime number: its only divisors are 1 and {n}.'
    else:
      d = next(k for k in range(2, n) if n % k == 0)
      a = f'No, {n} is not prime because {n} = {d} × {n // d}.'
  elif kind == 'divisible':
    k = rng.randint(3, 12)
    n = k * rng.randint(3, 30) + (0 if yes else rng.randint(1, k - 1))
    q = rng.choice(['Is {n} divisible by {k}?', 'Can {n} be divided evenly by {k}?',
                    'Is {n} a multiple of {k}?']).format(n=n, k=k)  # fmt: skip
    a = (f'Yes, {n} ÷ {k} = {n // k} with no remainder.' if yes else
         f'No, {n} ÷ {k} leaves a remainder of {n % k}.')  # fmt: skip
  elif kind == 'compare':
    x, y = rng.sample(range(10, 1000), 2)
    yes = x > y
    q = rng.choice(['Is {x} greater than {y}?', 'Is {x} bigger than {y}?',
                    'Is {x} larger than {y}?']).format(x=x, y=y)  # fmt: skip
    a = (f'Yes, {x} is greater than {y}.' if yes else
         f'No, {x} is less than {y}.')  # fmt: skip
  elif kind == 'parity':
    n = rng.randint(2, 999)
    even = n % 2 == 0
    ask_even = rng.random() < 0.5
    yes = even == ask_even
    q = f'Is {n} an {"even" if ask_even else "odd"} number?'
    a = f'{"Yes" if yes else "No"}, {n} is {"even" if even else "odd"}.'
  elif kind == 'animal':
    animal, group = rng.choice(tb.ANIMAL_CLASSES)
    said = (
      group if yes else rng.choice([g for g in tb.ANIMAL_GROUPS if g != group])
    )
    q = f'Is {_an(animal)} {animal} {_an(said)} {said}?'
    a = (f'Yes, {_an(animal)} {animal} is {_an(group)} {group}.' if yes else
         f'No, {_an(animal)} {animal} is {_an(group)} {group}, not {_an(said)} {said}.')  # fmt: skip
  else:
    w = rng.choice(tb.PALINDROMES) if yes else rng.choice(tb.WORD_POOL)
    q = rng.choice(['Is "{w}" a palindrome?', 'Is the word "{w}" a palindrome?',
                    'Does "{w}" read the same backwards?']).format(w=w)  # fmt: skip
    a = (f'Yes, "{w}" reads the same forwards and backwards.' if yes else
         f'No, "{w}" backwards is "{w[::-1]}".')  # fmt: skip
  return rng.choice(_YN_PREFIX) + q, a


# ----------------------------------------------------------------- arithmetic

_OPS = {'+': lambda a, b: a + b, '-': lambda a, b: a - b,
        '×': lambda a, b: a * b, '÷': lambda a, b: a // b}  # fmt: skip


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
  if op == '+':
    return rng.randint(10, 999), rng.randint(10, 999)
  if op == '-':
    a, b = rng.randint(20, 999), rng.randint(1, 500)
    return max(a, b), min(a, b)
  if op == '×':
    return rng.randint(2, 99), rng.randint(2, 25)
  b = rng.randint(2, 20)
  return b * rng.randint(2, 50), b


def arithmetic(rng: random.Random) -> Pair:
  if rng.random() < 0.6:  # one operation
    op = rng.choice(list(_OPS))
    a, b = _operands(rng, op)
    r = _OPS[op](a, b)
    expr = f'{a} {op} {b}'
    words = {'+': ['What is {a} plus {b}?', 'What is the sum of {a} and {b}?', 'Add {a} and {b}.'],
             '-': ['What is {a} minus {b}?', 'Subtract {b} from {a}.', 'What is the difference between {a} and {b}?'],
             '×': ['What is {a} times {b}?', 'Multiply {a} by {b}.', 'What is the product of {a} and {b}?'],
             '÷': ['What is {a} divided by {b}?', 'Divide {a} by {b}.', 'How many times does {b} go into {a}?']}  # fmt: skip
    if rng.random() < 0.4:
      return rng.choice(words[op]).format(a=a, b=b), f'{expr} = {r}'
    chain = f'{expr} = {r}'
  else:  # two operations: the chain shows the intermediate value
    op1, op2 = rng.choice([('×', '+'), ('×', '-'), ('+', '×'), ('-', '×'),
                           ('+', '+'), ('÷', '+')])  # fmt: skip
    a, b = _operands(rng, op1)
    if op1 in ('+', '-') and op2 == '×':  # (a ± b) × c
      a, b = rng.randint(2, 60), rng.randint(1, 40)
      a, b = (max(a, b), min(a, b)) if op1 == '-' else (a, b)
      c = rng.randint(2, 9)
      mid = _OPS[op1](a, b)
      expr = f'({a} {op1} {b}) × {c}'
      chain = f'{expr} = {mid} × {c} = {mid * c}'
    else:  # a op1 b op2 c, op1 binds tighter or equally
      mid = _OPS[op1](a, b)
      c = rng.randint(1, mid) if op2 == '-' else rng.randint(2, 300)
      expr = f'{a} {op1} {b} {op2} {c}'
      chain = f'{expr} = {mid} {op2} {c} = {_OPS[op2](mid, c)}'
  q = rng.choice([
    'What is {e}?', 'Calculate {e}.', 'Compute {e}.', 'Evaluate {e}.', 'Solve: {e}',
    'What does {e} equal?', 'Work out {e}.', '{e} = ?', 'Please calculate {e} for me.',
    'How much is {e}?',
  ]).format(e=expr)  # fmt: skip
  return q, chain


# --------------------------------------------------------------- word_problem


def word_problem(rng: random.Random) -> Pair:
  """Multi-step problems; every step is an `a op b = c` equation."""
  name, he = _name(rng)
  his = {'she': 'her', 'he': 'his'}[he]
  k = rng.randrange(12)
  if k == 0:
    item = rng.choice(
      ['apples', 'stickers', 'marbles', 'pencils', 'cookies', 'cards']
    )
    p, n, h = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 30)
    q = f'{name} has {h} {item}. {_cap(he)} buys {p} packs with {n} {item} in each pack. How many {item} does {he} have now?'
    s = [
      f'The packs hold {p} × {n} = {p * n} {item}.',
      f'Adding the {item} {he} already had: {h} + {p * n} = {h + p * n}.',
    ]
    ans = h + p * n
  elif k == 1:
    item = rng.choice(
      ['notebooks', 'tickets', 'sandwiches', 'pens', 'mugs', 'plants']
    )
    qn, c = rng.randint(2, 8), rng.randint(2, 15)
    m = qn * c + rng.randint(1, 60)
    q = f'{name} has ${m}. {_cap(he)} buys {qn} {item} that cost ${c} each. How much money does {he} have left?'
    s = [
      f'The {item} cost {qn} × {c} = {qn * c} dollars.',
      f'Money left: {m} - {qn * c} = {m - qn * c} dollars.',
    ]
    ans = m - qn * c
  elif k == 2:
    v = rng.choice(['train', 'car', 'bus', 'cyclist', 'truck'])
    s1, h1, s2, h2 = (
      rng.randint(20, 90),
      rng.randint(2, 5),
      rng.randint(20, 90),
      rng.randint(1, 4),
    )
    q = f'A {v} travels at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. How far does it travel in total?'
    s = [f'First part: {s1} × {h1} = {s1 * h1} km.', f'Second part: {s2} × {h2} = {s2 * h2} km.',
         f'Total: {s1 * h1} + {s2 * h2} = {s1 * h1 + s2 * h2} km.']  # fmt: skip
    ans = s1 * h1 + s2 * h2
  elif k == 3:
    food = rng.choice(['cookies', 'muffins', 'cupcakes', 'rolls', 'brownies'])
    t, per = rng.randint(2, 6), rng.randint(4, 12)
    f = rng.choice([d for d in range(2, 10) if (t * per) % d == 0])
    e = t * per // f
    q = f'{name} bakes {t} trays of {food} with {per} on each tray and shares them equally among {f} friends. How many {food} does each friend get?'
    s = [
      f'Total {food}: {t} × {per} = {t * per}.',
      f'Each friend gets {t * per} ÷ {f} = {e}.',
    ]
    ans = e
  elif k == 4:
    p, d = rng.randint(5, 30), rng.randint(2, 9)
    total = p * d + rng.randint(10, 200)
    q = f'{name} reads {p} pages a day for {d} days. {_cap(his)} book has {total} pages. How many pages are left to read?'
    s = [
      f'Pages read: {p} × {d} = {p * d}.',
      f'Pages left: {total} - {p * d} = {total - p * d}.',
    ]
    ans = total - p * d
  elif k == 5:
    sv, w, h = rng.randint(5, 40), rng.randint(2, 12), rng.randint(5, 100)
    goal = h + sv * w
    q = f'{name} wants to save ${goal} for a new {rng.choice(["bike", "phone", "guitar", "tent", "camera"])}. {_cap(he)} already has ${h} and saves ${sv} every week. How many weeks will it take?'
    s = [
      f'Still needed: {goal} - {h} = {goal - h} dollars.',
      f'Weeks: {goal - h} ÷ {sv} = {w}.',
    ]
    ans = w
  elif k == 6:
    c, n = rng.randint(3, 12), rng.randint(15, 32)
    a = rng.randint(1, c * n // 4)
    q = f'A school has {c} classes with {n} students in each class. Today {a} students are absent. How many students are present?'
    s = [
      f'Students enrolled: {c} × {n} = {c * n}.',
      f'Present today: {c * n} - {a} = {c * n - a}.',
    ]
    ans = c * n - a
  elif k == 7:
    plant = rng.choice(['tomato', 'lettuce', 'pepper', 'bean', 'carrot'])
    r, n = rng.randint(3, 12), rng.randint(4, 15)
    dd = rng.randint(1, r * n // 3)
    q = f'{name} plants {r} rows of {plant} plants with {n} plants in each row. {dd} of them do not grow. How many {plant} plants grow?'
    s = [
      f'Plants in total: {r} × {n} = {r * n}.',
      f'Plants that grow: {r * n} - {dd} = {r * n - dd}.',
    ]
    ans = r * n - dd
  elif k == 8:
    pa, pc, na, nc = (
      rng.randint(8, 30),
      rng.randint(3, 12),
      rng.randint(1, 5),
      rng.randint(1, 6),
    )
    q = f'Adult tickets cost ${pa} and child tickets cost ${pc}. How much do {na} adults and {nc} children pay in total?'
    s = [f'Adults: {na} × {pa} = {na * pa} dollars.', f'Children: {nc} × {pc} = {nc * pc} dollars.',
         f'Total: {na * pa} + {nc * pc} = {na * pa + nc * pc} dollars.']  # fmt: skip
    ans = na * pa + nc * pc
  elif k == 9:
    h, d, w = rng.randint(3, 9), rng.randint(3, 6), rng.randint(2, 8)
    q = f'{name} works {h} hours a day, {d} days a week. How many hours does {he} work in {w} weeks?'
    s = [
      f'Hours per week: {h} × {d} = {h * d}.',
      f'Hours in {w} weeks: {h * d} × {w} = {h * d * w}.',
    ]
    ans = h * d * w
  elif k == 10:
    t, up = rng.randint(2, 15), rng.randint(3, 12)
    down = rng.randint(1, t + up - 1)
    q = f'The temperature was {t} °C in the morning. It rose by {up} degrees by noon and then fell by {down} degrees by the evening. What was the temperature in the evening?'
    s = [
      f'At noon: {t} + {up} = {t + up} °C.',
      f'In the evening: {t + up} - {down} = {t + up - down} °C.',
    ]
    ans = t + up - down
  else:
    sv, per, n = (
      rng.choice([2, 4, 5]),
      rng.choice([20, 25, 30, 40, 50]),
      rng.randint(3, 12),
    )
    q = f'A recipe uses {sv * per} grams of flour for {sv} servings. How much flour is needed for {n} servings?'
    s = [
      f'Flour per serving: {sv * per} ÷ {sv} = {per} grams.',
      f'For {n} servings: {per} × {n} = {per * n} grams.',
    ]
    ans = per * n
  return q, '\n'.join(s) + f'\nThe answer is {ans}.'


# ---------------------------------------------------- topic_classification

_TEAMS = [
  'Tigers',
  'Eagles',
  'Rovers',
  'Lions',
  'Sharks',
  'Wolves',
  'Falcons',
  'Bears',
]
_COMPANIES = [
  'Nimbus',
  'Orbitek',
  'Brightline',
  'Kestrel Labs',
  'Solvo',
  'Pinecrest',
  'Vantage',
]
_TOPIC_SENTENCES = {
  'sports': [
    "The {team} beat the {team2} {s1}-{s2} in last night's game.",
    '{name} won the {event} final after a thrilling last set.',
    'Our local {sport} team qualified for the national championship.',
    '{name} broke the national record in the {dist} meters.',
    "The coach announced the starting lineup for Saturday's {sport} match.",
  ],
  'politics': [
    'The parliament passed a new law on {policy} after a long debate.',
    'The prime minister met opposition leaders to discuss {policy}.',
    'Voters in {city} will elect a new mayor next month.',
    'The senator proposed a bill to increase funding for {policy}.',
    'The government announced a referendum on {policy}.',
  ],
  'technology': [
    'The new {device} ships with a faster processor and a longer battery life.',
    '{company} released a software update that fixes security bugs in its {device}.',
    'Engineers at {company} built an app that translates speech in real time.',
    'The latest {device} can be unlocked with facial recognition.',
    '{company} launched a cloud service for storing {files}.',
  ],
  'science': [
    'Astronomers discovered a new planet orbiting a star {n} light-years away.',
    'Researchers found that {animal}s use the magnetic field to navigate.',
    'The experiment showed that {element} reacts faster at high temperatures.',
    'Biologists sequenced the genome of a rare {animal}.',
    'Geologists measured how fast the glacier near {city} is melting.',
  ],
  'business': [
    '{company} reported record profits for the quarter.',
    'The central bank raised interest rates by {p} percent.',
    'Shares of {company} fell after the merger talks collapsed.',
    'The retailer plans to open {n} new stores next year.',
    '{company} agreed to buy a smaller rival for {n} million dollars.',
  ],
  'health': [
    'Doctors recommend {n} minutes of exercise a day to keep the heart healthy.',
    'A new vaccine cut {disease} cases by half in the trial.',
    'Drinking enough water can help prevent headaches.',
    'The clinic in {city} now offers free {disease} screenings.',
    'Getting enough sleep improves memory and mood, a new study says.',
  ],
  'food': [
    'This {dish} recipe uses fresh {veg} and a pinch of salt.',
    'The new bakery in {city} sells the best {pastry} in town.',
    'Simmer the {veg} sauce for twenty minutes before serving.',
    'The chef served the {dish} with roasted {veg}.',
    'Add the {veg} to the pan and stir until golden.',
  ],
  'travel': [
    'Flights from {city} to {city2} are cheapest in early spring.',
    'We spent a week hiking along the coast near {city}.',
    'The hotel offers free breakfast and a shuttle to the airport.',
    'Remember to renew your passport before your trip to {country}.',
    'The night train to {city2} leaves at {h} p.m.',
  ],
}
_FILLS = {
  'event': ['tennis', 'chess', 'badminton', 'squash', 'table tennis'],
  'sport': ['soccer', 'hockey', 'rugby', 'volleyball', 'basketball'],
  'dist': ['100', '200', '400', '800', '1,500'],
  'policy': [
    'public transport',
    'renewable energy',
    'housing',
    'education',
    'healthcare',
    'pensions',
  ],
  'device': ['smartphone', 'laptop', 'tablet', 'smartwatch', 'router'],
  'files': ['photos', 'videos', 'documents', 'backups'],
  'animal': ['turtle', 'salmon', 'pigeon', 'bee', 'bat', 'whale'],
  'disease': ['flu', 'measles', 'malaria', 'diabetes'],
  'dish': ['soup', 'risotto', 'curry', 'stew', 'pasta', 'salad'],
  'veg': ['tomatoes', 'mushrooms', 'carrots', 'spinach', 'peppers', 'onions'],
  'pastry': ['croissants', 'bagels', 'cinnamon rolls', 'muffins'],
}


def _fill(template: str, rng: random.Random) -> str:
  cities = [c[1] for c in tb.CAPITALS]
  teams = rng.sample(_TEAMS, 2)
  vals = {k: rng.choice(v) for k, v in _FILLS.items()}
  vals.update(team=teams[0], team2=teams[1], s1=rng.randint(2, 6), s2=rng.randint(0, 1),
              name=_name(rng)[0], city=rng.choice(cities), city2=rng.choice(cities),
              company=rng.choice(_COMPANIES), n=rng.randint(3, 90), p=rng.choice(['0.25', '0.5', '0.75']),
              element=rng.choice(tb.ELEMENTS)[0], country=rng.choice(tb.CAPITALS)[0],
              h=rng.randint(7, 11))  # fmt: skip
  return template.format(**vals)


def topic_classification(rng: random.Random) -> Pair:
  topic = rng.choice(sorted(_TOPIC_SENTENCES))
  sentence = _fill(rng.choice(_TOPIC_SENTENCES[topic]), rng)
  others = rng.sample(
    [t for t in _TOPIC_SENTENCES if t != topic], rng.randint(2, 4)
  )
  classes = others + [topic]
  rng.shuffle(classes)
  cl = ', '.join(classes)
  q = rng.choice([
    'Classify the topic of this sentence as one of: {cl}.\n\nSentence: {s}',
    'Which category does this sentence belong to? Options: {cl}\n\n"{s}"',
    'Assign one of the labels {cl} to the text below.\n\nText: {s}',
    'Topic classification. Categories: {cl}.\nInput: {s}',
    'Read the sentence and pick its topic from {cl}: {s}',
    'Label the following headline with its category ({cl}).\n{s}',
    '{s}\n\nWhat is the topic of the sentence above? Choose from: {cl}.',
    'Categorize this text into one of [{cl}].\n\n{s}',
  ]).format(cl=cl, s=sentence)  # fmt: skip
  return q, f'Category: {_cap(topic)}'


# ------------------------------------------------------------------ sentiment

_PRODUCTS = ['headphones', 'blender', 'hotel room', 'pizza', 'movie', 'novel', 'phone case',
             'backpack', 'coffee maker', 'running shoes', 'restaurant', 'vacuum cleaner',
             'desk lamp', 'video game', 'concert', 'yoga mat', 'keyboard', 'tent',
             'jacket', 'taxi ride', 'museum tour', 'sofa', 'printer', 'toaster']  # fmt: skip
_POSITIVE = ['I absolutely love this {p}!', 'The {p} exceeded all my expectations.',
             'Best {p} I have ever had, highly recommended.', 'This {p} is fantastic and worth every penny.',
             'The {p} works perfectly and arrived early.', 'What a wonderful {p}, I would buy it again.',
             'Really impressed with the quality of the {p}.', 'The {p} made my day, five stars.']  # fmt: skip
_NEGATIVE = ['I regret buying this {p}.', 'The {p} broke after two days.',
             'Worst {p} I have ever had, avoid it.', 'This {p} is a complete waste of money.',
             'The {p} arrived late and damaged.', 'Very disappointed with the {p}.',
             'The {p} is noisy, flimsy and overpriced.', 'Terrible {p}, one star.']  # fmt: skip
_POS_EXTRA = ['The staff were friendly too.', 'Setup took two minutes.', 'My kids love it as well.',
              'Great value for the price.', '']  # fmt: skip
_NEG_EXTRA = ['Customer service never replied.', 'I asked for a refund.', 'It stopped working quickly.',
              'Not what the photos showed.', '']  # fmt: skip


def sentiment(rng: random.Random) -> Pair:
  pos = rng.random() < 0.5
  p = rng.choice(_PRODUCTS)
  review = rng.choice(_POSITIVE if pos else _NEGATIVE).format(p=p)
  review = (
    review + ' ' + rng.choice(_POS_EXTRA if pos else _NEG_EXTRA)
  ).strip()
  q = rng.choice([
    'What is the sentiment of this review?\n\n{r}', 'Classify the sentiment (positive or negative): {r}',
    'Is the following review positive or negative?\n"{r}"', 'Sentiment analysis:\n{r}',
    'Determine whether this customer feedback is positive or negative: {r}',
    'How does the reviewer feel? Answer Positive or Negative.\n\n{r}',
    'Label this comment as positive or negative: "{r}"', 'Review: {r}\nSentiment?',
  ]).format(r=review)  # fmt: skip
  return q, 'Positive' if pos else 'Negative'


# -------------------------------------------------------------- missing_input
# (object, verb with '{}' where an object pronoun may go, instructions)
_MISSING = [
  ('article', 'summarize{}', ['Summarize the article.', 'Can you summarize this article for me?',
   'Give me a three-sentence summary of the article below.', 'TL;DR of the following article, please.',
   'What are the key points of the article I shared?', 'Summarize the attached news article in one paragraph.']),
  ('text', 'translate{} into French', ['Translate the following text into French.',
   'Please translate this paragraph to French:', 'Can you put the text below into French?']),
  ('code', 'debug{}', ['Fix the bug in my code.', 'Why does this function crash? Here it is:',
   'Find the error in the following Python script.', 'My code below throws an exception. What is wrong?']),
  ('essay', 'proofread{}', ['Proofread my essay.', 'Check my essay below for spelling mistakes.',
   'Please proofread the essay I wrote.']),
  ('email', 'reply to{}', ['Write a reply to the email below.', 'Help me respond to this email.',
   'Draft a polite answer to the email I received.']),
  ('review', 'classify{}', ['Classify the sentiment of this review.',
   'Is the following review positive or negative?', 'Tell me whether the review below is positive.']),
  ('poem', 'analyze{}', ['Analyze the poem I pasted below.', 'What is the main theme of this poem?',
   'Explain the metaphors in the following poem.']),
  ('table', 'convert{} to JSON', ['Convert the table below into JSON.', 'Turn this table into a JSON list.']),
  ('list of names', 'sort{} alphabetically', ['Sort the following names alphabetically.',
   'Put these names in alphabetical order:']),
  ('sentence', 'correct{}', ['Correct the grammar of the following sentence.', 'Fix the grammar in this sentence:']),
  ('paragraph', 'rewrite{}', ['Rewrite this paragraph in a more formal tone.', 'Make the paragraph below more concise.',
   'Simplify the following paragraph for a child.']),
  ('document', 'answer questions about{}', ['Answer the questions based on the attached document.',
   'According to the document, when was the company founded?', 'What does the document say about the budget?']),
  ('cover letter', 'give feedback on{}', ['Give me feedback on my cover letter.', 'How can I improve the cover letter below?']),
  ('recipe', 'convert{} to metric units', ['Convert the recipe below to metric units.',
   'Change the measurements in this recipe to grams.']),
  ('list of numbers', 'calculate the average of{}', ['Calculate the average of these numbers:',
   'What is the mean of the following values?', 'Compute the average of the numbers I listed.']),
  ('story', 'continue{}', ['Continue the story below.', 'Write an ending for this story:']),
  ('contract', 'review{}', ['Review the contract and list any risky clauses.', 'Is there anything unusual in this contract?']),
  ('transcript', 'extract the action items from{}', ['Extract the action items from the meeting transcript.',
   'List the action items from the transcript below.']),
  ('data', 'plot{}', ['Make a bar chart of the data below.', 'Plot the following data as a line chart.']),
  ('passage', 'translate{} into German', ['Translate this passage into German:', 'Can you put the passage below into German?']),
  ('song lyrics', 'explain{}', ['Explain the meaning of these song lyrics.', 'What are the lyrics below about?']),
  ('spreadsheet', 'check{}', ['Check my spreadsheet for formula errors.']),
]  # fmt: skip
_MISSING_REPLIES = [
  'Please provide the {obj} you would like me to {bare}.',
  "I'd be happy to help, but no {obj} was included in your message. Could you please share the {obj} you would like me to {bare}?",
  'It looks like the {obj} is missing. Please paste the {obj} and I will {it}.',
  "Could you share the {obj}? I don't see it in your message, so I can't {it} yet.",
  'Sure! Please send me the {obj} you want me to {bare}.',
  "I don't see the {obj} in your message. Please provide it so I can {it}.",
  'To {it}, I first need the {obj} itself. Please paste the {obj} here.',
  "The {obj} didn't come through. Could you please provide the {obj} you'd like me to {bare}?",
]  # fmt: skip


def missing_input(rng: random.Random) -> Pair:
  obj, verb, instructions = rng.choice(_MISSING)
  reply = rng.choice(_MISSING_REPLIES).format(
    obj=obj, bare=verb.format(''), it=verb.format(' it')
  )
  q = rng.choice(instructions)
  if rng.random() < 0.25:
    q = (
      rng.choice(
        [
          'Hi! ',
          'Hello, ',
          'Quick task: ',
          'Please help. ',
          'Thanks in advance! ',
        ]
      )
      + q
    )
  return q, reply
