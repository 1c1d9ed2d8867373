"""Task generators of the embedded mixture with strongly formatted answers.

Code in a fenced block, "- " bullets, "1. " steps, word-level answers in
quotes, translations, transformed text, emails and corrected sentences (see
mixture.py). Each generator maps a `random.Random` to a (user, assistant) pair.
"""

from __future__ import annotations

import random

from gatoms_jax.demo import mixture_tables as tb

Pair = tuple[str, str]
NUMBER_WORDS = {3: 'three', 4: 'four', 5: 'five'}


def _an(word: str) -> str:
  return 'an' if word[0].lower() in 'aeiou' else 'a'


def _cap(text: str) -> str:
  return text[0].upper() + text[1:]


# ----------------------------------------------------------------------- code
# (description, code); '{k}' is filled with a small integer.
_FUNCTIONS = [
  ('returns the sum of a list of numbers', 'def sum_list(numbers):\n    total = 0\n    for x in numbers:\n        total += x\n    return total'),
  ('checks whether a number is even', 'def is_even(n):\n    return n % 2 == 0'),
  ('reverses a string', 'def reverse_string(s):\n    return s[::-1]'),
  ('returns the factorial of n', 'def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result'),
  ('counts the vowels in a string', "def count_vowels(s):\n    return sum(1 for c in s.lower() if c in 'aeiou')"),
  ('returns the largest number in a list', 'def largest(numbers):\n    best = numbers[0]\n    for x in numbers[1:]:\n        if x > best:\n            best = x\n    return best'),
  ('checks whether a string is a palindrome', 'def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]'),
  ('converts Celsius to Fahrenheit', 'def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32'),
  ('returns the n-th Fibonacci number', 'def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a'),
  ('removes duplicates from a list while keeping the order', 'def unique(items):\n    seen = set()\n    out = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out'),
  ('counts how often each word appears in a sentence', 'def word_counts(sentence):\n    counts = {}\n    for word in sentence.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts'),
  ('checks whether a number is prime', 'def is_prime(n):\n    if n < 2:\n        return False\n    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n    return True'),
  ('returns the average of a list of numbers', 'def average(numbers):\n    return sum(numbers) / len(numbers)'),
  ('capitalizes the first letter of every word', "def capitalize_words(text):\n    return ' '.join(w.capitalize() for w in text.split())"),
  ('returns the squares of the numbers in a list', 'def squares(numbers):\n    return [x * x for x in numbers]'),
  ('merges two dictionaries', 'def merge(a, b):\n    result = dict(a)\n    result.update(b)\n    return result'),
  ('flattens a list of lists', 'def flatten(lists):\n    return [x for sub in lists for x in sub]'),
  ('returns the greatest common divisor of two numbers', 'def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a'),
  ('checks whether two strings are anagrams', 'def are_anagrams(a, b):\n    return sorted(a) == sorted(b)'),
  ('counts the words in a string', 'def count_words(text):\n    return len(text.split())'),
  ('returns only the even numbers from a list', 'def evens(numbers):\n    return [x for x in numbers if x % 2 == 0]'),
  ('computes the area of a circle from its radius', 'import math\n\n\ndef circle_area(r):\n    return math.pi * r ** 2'),
  ('swaps the keys and values of a dictionary', 'def invert(d):\n    return {v: k for k, v in d.items()}'),
  ('returns True if a number is divisible by {k}', 'def divisible_by_{k}(n):\n    return n % {k} == 0'),
  ('multiplies every element of a list by {k}', 'def multiply_by_{k}(numbers):\n    return [x * {k} for x in numbers]'),
  ('returns the words longer than {k} characters', 'def long_words(text):\n    return [w for w in text.split() if len(w) > {k}]'),
  ('repeats a string {k} times', 'def repeat(s):\n    return s * {k}'),
  ('adds {k} to every number in a list', 'def add_{k}(numbers):\n    return [x + {k} for x in numbers]'),
  ('returns the first {k} elements of a list', 'def first_{k}(items):\n    return items[:{k}]'),
  ('raises a number to the power of {k}', 'def power_{k}(x):\n    return x ** {k}'),
  ('returns the multiples of {k} below 100', 'def multiples_of_{k}():\n    return list(range({k}, 100, {k}))'),
]  # fmt: skip
_CONVERSIONS = [('kilometers', 'miles', 'km', 'miles', '0.621371'),
                ('kilograms', 'pounds', 'kg', 'pounds', '2.20462'),
                ('inches', 'centimeters', 'inches', 'cm', '2.54'),
                ('hours', 'minutes', 'hours', 'minutes', '60'),
                ('meters', 'feet', 'meters', 'feet', '3.28084'),
                ('liters', 'milliliters', 'liters', 'ml', '1000')]  # fmt: skip


def code(rng: random.Random) -> Pair:
  if rng.random() < 0.15:
    a, b, x, y, f = rng.choice(_CONVERSIONS)
    desc = f'converts {a} to {b}'
    body = f'def {x}_to_{y}(value):\n    return value * {f}'
  else:
    desc, body = rng.choice(_FUNCTIONS)
    k = rng.randint(2, 9)
    desc, body = desc.format(k=k), body.replace('{k}', str(k))
  q = rng.choice([
    'Write a Python function that {d}.', 'Can you write a Python function that {d}?',
    'I need a Python function which {d}.', 'Implement a Python function that {d}.',
    'Show me Python code for a function that {d}.', 'Create a function in Python that {d}.',
    'Python: write a function that {d}.', 'Give me a short Python function that {d}.',
    'Write Python code that defines a function which {d}.',
  ]).format(d=desc)  # fmt: skip
  return q, f'```python\n{body}\n```'


# -------------------------------------------------------------------- bullets


def bullets(rng: random.Random) -> Pair:
  cat, members = rng.choice(tb.LIST_CATEGORIES)
  members = [m.strip() for m in members.split(',')]
  k = rng.randint(3, min(5, len(members)))
  n = NUMBER_WORDS[k]
  items = rng.sample(members, k)
  q = rng.choice([
    'List {n} {c}.', 'Give me {n} examples of {c}.', 'Name {n} {c} as a bulleted list.',
    'Write a bulleted list of {n} {c}.', 'Can you list {n} {c}?', 'Bullet points, please: {n} {c}.',
    'I need {n} {c}, one per bullet.', 'Provide a list of {n} {c}.', 'What are {n} {c}? Use bullet points.',
  ]).format(n=n, c=cat)  # fmt: skip
  body = '\n'.join(
    f'- {_cap(i) if cat.startswith(("ways", "tips", "benefits", "reasons", "things")) else i}'
    for i in items
  )
  if rng.random() < 0.4:
    body = (
      rng.choice([f'Here are {n} {cat}:', f'Sure, {n} {cat}:', 'Here you go:'])
      + '\n'
      + body
    )
  return q, body


# ------------------------------------------------------------------- numbered

_PROCEDURES = [
  ('make a cup of tea', ['Boil fresh water.', 'Put a tea bag in a mug.', 'Pour the hot water over the tea bag.', 'Let it steep for three to five minutes.', 'Remove the tea bag and add milk or sugar if you like.']),
  ('boil an egg', ['Place the egg in a small pot.', 'Cover it with cold water.', 'Bring the water to a boil.', 'Simmer for seven to nine minutes.', 'Cool the egg in cold water and peel it.']),
  ('change a flat tire', ['Park on flat ground and turn on the hazard lights.', 'Loosen the lug nuts slightly.', 'Raise the car with the jack.', 'Remove the lug nuts and the flat tire.', 'Mount the spare tire and tighten the nuts.', 'Lower the car and tighten the nuts fully.']),
  ('plant a tree', ['Choose a sunny spot with enough space.', 'Dig a hole twice as wide as the root ball.', 'Place the tree in the hole.', 'Fill the hole with soil and press it down.', 'Water the tree deeply.']),
  ('make a paper airplane', ['Fold a sheet of paper in half lengthwise and unfold it.', 'Fold the top corners to the center line.', 'Fold the new edges to the center again.', 'Fold the plane in half.', 'Fold down the wings on each side.']),
  ('do a load of laundry', ['Sort the clothes by color.', 'Put one load in the washing machine.', 'Add detergent.', 'Choose the right cycle and start the machine.', 'Hang or tumble-dry the clothes when it finishes.']),
  ('reset a forgotten password', ['Open the login page.', 'Click "Forgot password".', 'Enter your email address.', 'Open the reset link in the email you receive.', 'Choose a new strong password.']),
  ('make a sandwich', ['Take two slices of bread.', 'Spread butter or mayonnaise on one side of each slice.', 'Add cheese, ham and lettuce.', 'Close the sandwich with the second slice.', 'Cut it in half and serve.']),
  ('cook pasta', ['Bring a large pot of salted water to a boil.', 'Add the pasta and stir.', 'Cook it for the time shown on the package.', 'Drain the pasta.', 'Mix it with your sauce.']),
  ('back up a computer', ['Connect an external drive.', 'Open the backup settings.', 'Select the drive as the backup destination.', 'Choose the folders to include.', 'Start the backup and wait for it to finish.']),
  ('wrap a present', ['Measure enough paper to cover the box.', 'Place the box upside down on the paper.', 'Fold the paper over the box and tape it.', 'Fold the ends into triangles and tape them.', 'Add a ribbon and a gift tag.']),
  ('make pancakes', ['Mix flour, sugar and baking powder in a bowl.', 'Whisk in milk, an egg and melted butter.', 'Heat a greased pan over medium heat.', 'Pour in a small amount of batter.', 'Flip the pancake when bubbles appear, then cook the other side.']),
  ('install a Python package with pip', ['Open a terminal.', 'Activate your virtual environment.', 'Run pip install followed by the package name.', 'Wait for the installation to finish.', 'Import the package in Python to check it works.']),
  ('prepare for a job interview', ['Research the company.', 'Reread the job description.', 'Prepare answers to common questions.', 'Plan your outfit and route.', 'Prepare a few questions to ask the interviewer.']),
  ('make a fruit smoothie', ['Cut the fruit into pieces.', 'Put the fruit in a blender.', 'Add yogurt or milk.', 'Blend until smooth.', 'Pour into a glass and serve.']),
  ('brew coffee with a French press', ['Boil water and let it cool for a minute.', 'Add coarsely ground coffee to the press.', 'Pour in the water and stir.', 'Wait four minutes.', 'Press the plunger down slowly and pour.']),
  ('study for an exam', ['Make a study schedule.', 'Review your notes for each topic.', 'Practice with old exam questions.', 'Take short breaks.', 'Sleep well the night before.']),
  ('pack a suitcase', ['Make a list of what you need.', 'Roll your clothes to save space.', 'Put heavy items at the bottom.', 'Pack toiletries in a sealed bag.', 'Keep documents in an easy-to-reach pocket.']),
  ('change a light bulb', ['Turn off the light switch.', 'Let the old bulb cool down.', 'Unscrew the old bulb.', 'Screw in the new bulb.', 'Turn the switch back on to test it.']),
  ('make a bed', ['Remove the old sheets.', 'Put on the fitted sheet.', 'Spread the top sheet or duvet evenly.', 'Put clean cases on the pillows.', 'Arrange the pillows at the head of the bed.']),
  ('clean a laptop keyboard', ['Shut down and unplug the laptop.', 'Turn it upside down and tap out loose crumbs.', 'Blow between the keys with compressed air.', 'Wipe the keys with a slightly damp cloth.', 'Let it dry before turning it on.']),
  ('start a vegetable garden', ['Pick a sunny spot.', 'Clear the weeds and loosen the soil.', 'Mix in compost.', 'Sow the seeds at the depth on the packet.', 'Water regularly.']),
  ('create a strong password', ['Use at least twelve characters.', 'Mix upper- and lowercase letters.', 'Add numbers and symbols.', 'Avoid names and dictionary words.', 'Store it in a password manager.']),
  ('write a cover letter', ['Address the hiring manager by name.', 'State the job you are applying for.', 'Explain why you fit the role.', 'Give one concrete achievement.', 'Close by thanking them and asking for an interview.']),
]  # fmt: skip


def numbered(rng: random.Random) -> Pair:
  task, steps = rng.choice(_PROCEDURES)
  q = rng.choice([
    'How do I {t}?', 'What are the steps to {t}?', 'Explain step by step how to {t}.',
    'Give me numbered instructions to {t}.', 'Walk me through how to {t}.',
    'What steps should I follow to {t}?', 'Outline the steps to {t}.',
    'Can you tell me how to {t}, step by step?', 'Write step-by-step instructions to {t}.',
  ]).format(t=task)  # fmt: skip
  body = '\n'.join(f'{i}. {s}' for i, s in enumerate(steps, start=1))
  if rng.random() < 0.3:
    body = f'Here is how to {task}:\n' + body
  return q, body


# ----------------------------------------------------------------- word_tasks


def word_tasks(rng: random.Random) -> Pair:
  kind = rng.choice(
    [
      'plural',
      'antonym',
      'rhyme',
      'letters',
      'count_letter',
      'past',
      'participle',
      'first_last',
      'sort',
    ]
  )
  if kind == 'plural':
    s, p = rng.choice(tb.PLURALS)
    q = rng.choice(
      [
        'What is the plural of "{w}"?',
        'Give the plural form of the word "{w}".',
        'Plural of "{w}"?',
      ]
    )
    return q.format(w=s), f'The plural of "{s}" is "{p}".'
  if kind == 'antonym':
    a, b = rng.choice(tb.ANTONYMS)
    q = rng.choice(
      [
        'What is the opposite of "{w}"?',
        'Give an antonym for "{w}".',
        'What is an antonym of the word "{w}"?',
      ]
    )
    return q.format(w=a), f'The opposite of "{a}" is "{b}".'
  if kind == 'rhyme':
    w, rhymes = rng.choice(tb.RHYMES)
    r = [x.strip() for x in rhymes.split(',')]
    if rng.random() < 0.5:
      q = rng.choice(
        ['Give me a word that rhymes with "{w}".', 'What rhymes with "{w}"?']
      )
      return q.format(w=w), f'"{rng.choice(r)}" rhymes with "{w}".'
    q = f'List three words that rhyme with "{w}".'
    return (
      q,
      f'Three words that rhyme with "{w}": "{r[0]}", "{r[1]}" and "{r[2]}".',
    )
  if kind == 'letters':
    w = rng.choice(tb.WORD_POOL)
    q = rng.choice(
      [
        'How many letters are in the word "{w}"?',
        'Count the letters in "{w}".',
        'How long is the word "{w}", in letters?',
      ]
    )
    return q.format(w=w), f'The word "{w}" has {len(w)} letters.'
  if kind == 'count_letter':
    w = rng.choice(tb.WORD_POOL)
    c = rng.choice(sorted(set(w)))
    n = w.count(c)
    q = rng.choice(
      [
        'How many times does the letter "{c}" appear in "{w}"?',
        'Count the "{c}"s in the word "{w}".',
      ]
    )
    return q.format(
      c=c, w=w
    ), f'The letter "{c}" appears {n} time{"s" if n > 1 else ""} in "{w}".'
  if kind == 'past':
    base, past, _, _ = rng.choice(tb.VERBS)
    q = rng.choice(
      [
        'What is the past tense of "{w}"?',
        'Give the simple past form of "{w}".',
      ]
    )
    return q.format(w=base), f'The past tense of "{base}" is "{past}".'
  if kind == 'participle':
    base, _, pp, _ = rng.choice(tb.VERBS)
    q = 'What is the past participle of "{w}"?'.format(w=base)
    return q, f'The past participle of "{base}" is "{pp}".'
  if kind == 'first_last':
    w = rng.choice(tb.WORD_POOL)
    if rng.random() < 0.5:
      return (
        f'What is the first letter of "{w}"?',
        f'The first letter of "{w}" is "{w[0]}".',
      )
    return (
      f'What is the last letter of the word "{w}"?',
      f'The last letter of "{w}" is "{w[-1]}".',
    )
  words = rng.sample(tb.WORD_POOL, rng.randint(3, 5))
  q = rng.choice(
    [
      'Sort these words alphabetically: {w}.',
      'Put the following words in alphabetical order: {w}.',
    ]
  )
  return q.format(w=', '.join(words)), 'In alphabetical order: ' + ', '.join(
    f'"{x}"' for x in sorted(words)
  ) + '.'


# ---------------------------------------------------------------- translation


def translation(rng: random.Random) -> Pair:
  row = rng.choice(tb.TRANSLATIONS)
  i = rng.randrange(3)
  lang, en, tr = tb.LANGUAGES[i], row[0], row[1 + i]
  q = rng.choice([
    'Translate "{w}" into {L}.', 'How do you say "{w}" in {L}?', 'What is the {L} word for "{w}"?',
    'What\'s "{w}" in {L}?', '{L} translation of "{w}", please.', 'Give me the {L} for "{w}".',
    'In {L}, how would I say "{w}"?', 'Translate from English to {L}: {w}', 'Can you translate "{w}" to {L}?',
  ]).format(w=en, L=lang)  # fmt: skip
  a = rng.choice(
    ['{L}: "{t}"', 'In {L}, "{w}" is "{t}".', '"{w}" in {L} is "{t}".']
  )
  return q, a.format(L=lang, w=en, t=tr)


# ------------------------------------------------------------- text_transform

_ADJS = [
  'quick',
  'lazy',
  'happy',
  'little',
  'brave',
  'quiet',
  'clever',
  'sleepy',
  'tiny',
  'bright',
  'old',
  'gentle',
]
_NOUNS = [
  'fox',
  'dog',
  'cat',
  'bird',
  'robot',
  'farmer',
  'teacher',
  'river',
  'dragon',
  'baker',
  'sailor',
  'panda',
]
_VERBS = [
  'jumps',
  'sings',
  'runs',
  'sleeps',
  'dances',
  'waits',
  'smiles',
  'reads',
  'swims',
  'paints',
]
_ADVS = [
  'today',
  'slowly',
  'again',
  'quietly',
  'outside',
  'at night',
  'every morning',
  'near the park',
]


def _pig_latin(word: str) -> str:
  if word[0] in 'aeiou':
    return word + 'way'
  for i, ch in enumerate(word):
    if ch in 'aeiou':
      return word[i:] + word[:i] + 'ay'
  return word + 'ay'


def text_transform(rng: random.Random) -> Pair:
  phrase = f'the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {rng.choice(_ADVS)}'
  ops = {
    'upper': (['Convert to uppercase: {s}', 'Rewrite "{s}" in all capital letters.'], phrase.upper()),
    'title': (['Convert "{s}" to title case.', 'Capitalize every word: {s}'], ' '.join(w.capitalize() for w in phrase.split())),
    'reverse_words': (['Reverse the order of the words in "{s}".', 'Write the words of this sentence in reverse order: {s}'], ' '.join(phrase.split()[::-1])),
    'reverse_chars': (['Reverse the characters of "{s}".', 'Spell this backwards: {s}'], phrase[::-1]),
    'pig_latin': (['Translate "{s}" into Pig Latin.', 'Say this in Pig Latin: {s}'], ' '.join(_pig_latin(w) for w in phrase.split())),
    'no_vowels': (['Remove all vowels from "{s}".', 'Delete the vowels in this text: {s}'], ''.join(c for c in phrase if c not in 'aeiou')),
    'snake': (['Convert "{s}" to snake_case.', 'Replace the spaces with underscores: {s}'], phrase.replace(' ', '_')),
    'sort': (['Sort the words of "{s}" alphabetically.', 'Put the words of this phrase in alphabetical order: {s}'], ' '.join(sorted(phrase.split()))),
  }  # fmt: skip
  templates, out = ops[rng.choice(sorted(ops))]
  return rng.choice(templates).format(s=phrase), out


# ---------------------------------------------------------------------- email

_GIFTS = [
  'book',
  'scarf',
  'plant',
  'mug',
  'box of chocolates',
  'board game',
  'candle',
]
_EVENTS = [
  'birthday party',
  'team lunch',
  'housewarming',
  'book club meeting',
  'barbecue',
  'game night',
]
_ITEMS = [
  'desk chair',
  'coffee table',
  'printer',
  'bookshelf',
  'lamp',
  'laptop stand',
]
_DOCS = [
  'budget report',
  'slides',
  'meeting notes',
  'sales figures',
  'project plan',
]


def email(rng: random.Random) -> Pair:
  to = rng.choice(tb.NAMES)[0]
  me = rng.choice([n for n, _ in tb.NAMES if n != to])
  d1, d2 = rng.sample(tb.WEEKDAYS, 2)
  num = rng.randint(1000, 9999)
  time = f'{rng.randint(1, 8)} p.m.'
  purposes = [
    (f'asking to move our meeting from {d1} to {d2}', 'Rescheduling our meeting',
     f'Would it be possible to move our meeting from {d1} to {d2}? Something came up on {d1}. Please let me know if {d2} works for you.'),
    (f'thanking them for the {(g := rng.choice(_GIFTS))}', 'Thank you!',
     f'Thank you so much for the lovely {g}. It was very thoughtful of you, and I will enjoy it a lot.'),
    (f'asking for a day off on {d1}', f'Day off request for {d1}',
     f'I would like to request a day off on {d1} for a personal appointment. My tasks are up to date, and I will make sure everything is covered.'),
    (f'inviting them to my {(e := rng.choice(_EVENTS))} on {d2} at {time}', f'Invitation: {e} on {d2}',
     f'I am hosting a {e} on {d2} at {time} and would love for you to come. Please let me know if you can make it.'),
    (f'following up on invoice #{num}', f'Follow-up on invoice #{num}',
     f'I am following up on invoice #{num}, which is now past its due date. Could you please let me know when the payment will be made?'),
    (f'complaining that order #{num} ({(it := rng.choice(_ITEMS))}) arrived damaged', f'Damaged order #{num}',
     f'My order #{num}, a {it}, arrived damaged yesterday. I would like a replacement or a refund. Photos are available on request.'),
    (f'asking them to send the {(dc := rng.choice(_DOCS))} by {d2}', f'Request: {dc}',
     f'I would be grateful to receive the {dc} by {d2}, as I need it to finish my part of the project. Thanks in advance.'),
    ('congratulating them on their promotion', 'Congratulations!',
     'Congratulations on your promotion! It is very well deserved, and I look forward to seeing all you achieve in your new role.'),
    (f'welcoming them to the team starting {d1}', 'Welcome to the team!',
     f'Welcome to the team! We are excited to have you starting on {d1}. Let me know if you have any questions before your first day.'),
    ('apologizing for the late reply', 'Sorry for the late reply',
     'I am sorry for my late reply. The last few days have been very busy. I have read your message and will get back to you with details by tomorrow.'),
  ]  # fmt: skip
  purpose, subject, body = rng.choice(purposes)
  sign = rng.random() < 0.6
  q = rng.choice([
    'Write a short email to {to} {p}.', 'Draft an email to {to} {p}.',
    'Can you write a quick email to my colleague {to} {p}?', 'Help me write an email to {to} {p}.',
    'Please write a polite email to {to} {p}.', 'I need to email {to} {p}. Can you draft it?',
    'Compose a brief email to {to} {p}.', 'Write a short note to {to} {p}.',
  ]).format(to=to, p=purpose)  # fmt: skip
  if sign:
    q += f' Sign it as {me}.'
  greet = rng.choice(['Hi', 'Hello', 'Dear'])
  close = rng.choice(
    ['Best regards', 'Kind regards', 'Thanks', 'Best wishes', 'Warm regards']
  )
  return (
    q,
    f'Subject: {subject}\n\n{greet} {to},\n\n{body}\n\n{close},\n{me if sign else "[Your name]"}',
  )


# -------------------------------------------------------------------- grammar

_SUBJECTS = [
  'He',
  'She',
  'My sister',
  'The teacher',
  'Our neighbor',
  'My brother',
  'The manager',
  'My friend',
]
_PLURAL_SUBJECTS = [
  'They',
  'We',
  'The children',
  'My parents',
  'The students',
  'Our neighbors',
]
_SVA = [('walk', 'walks', 'to school every morning'), ('go', 'goes', 'to the gym on Mondays'),
        ('watch', 'watches', 'the news every evening'), ('study', 'studies', 'French at night'),
        ('play', 'plays', 'the piano very well'), ('like', 'likes', 'spicy food'),
        ('want', 'wants', 'a new bike'), ('need', 'needs', 'more time'),
        ('drink', 'drinks', 'coffee every morning'), ('live', 'lives', 'near the station'),
        ('work', 'works', 'at a bank'), ('cook', 'cooks', 'dinner on Sundays'),
        ('have', 'has', 'two cats'), ('do', 'does', 'the dishes after dinner'),
        ('carry', 'carries', 'a red umbrella'), ('visit', 'visits', 'the museum every summer')]  # fmt: skip
_PAST_OBJ = {'go': 'to the beach', 'eat': 'a big breakfast', 'see': 'a great movie', 'buy': 'a new coat',
             'write': 'a long letter', 'take': 'the early train', 'make': 'a chocolate cake',
             'drink': 'too much coffee', 'run': 'five kilometers', 'swim': 'in the lake',
             'bring': 'snacks to the party', 'teach': 'a math class', 'catch': 'a big fish',
             'find': 'a lost wallet', 'give': 'a speech', 'drive': 'to the mountains',
             'sing': 'a song at the wedding', 'speak': 'to the manager', 'begin': 'a new job',
             'forget': 'the keys at home', 'choose': 'the blue shirt', 'break': 'a glass',
             'fly': 'to Madrid'}  # fmt: skip
_TIME = [
  'Yesterday',
  'Last week',
  'Two days ago',
  'Last night',
  'Last summer',
  'Last year',
]
_A_AN = [('apple', 'ate {x} after lunch'), ('orange', 'peeled {x} for the kids'), ('egg', 'boiled {x} for breakfast'),
         ('umbrella', 'bought {x} at the market'), ('elephant', 'saw {x} at the zoo'), ('idea', 'had {x} for the project'),
         ('envelope', 'found {x} under the door'), ('onion', 'chopped {x} for the soup'), ('owl', 'heard {x} in the woods'),
         ('banana', 'ate {x} after the run'), ('book', 'borrowed {x} from the library'), ('car', 'rented {x} for the trip'),
         ('dog', 'adopted {x} last month'), ('cake', 'baked {x} for the party'), ('letter', 'wrote {x} to the mayor'),
         ('house', 'bought {x} by the sea'), ('bicycle', 'fixed {x} in the garage')]  # fmt: skip


def grammar(rng: random.Random) -> Pair:
  kind = rng.choice(
    [
      'sva',
      'sva_plural',
      'tense',
      'participle',
      'article',
      'plural',
      'comparative',
      'double_negative',
    ]
  )
  if kind == 'sva':
    base, s3, rest = rng.choice(_SVA)
    subj = rng.choice(_SUBJECTS + [rng.choice(tb.NAMES)[0]])
    bad, good, wrong, right = (
      f'{subj} {base} {rest}.',
      f'{subj} {s3} {rest}.',
      base,
      s3,
    )
    why = f'a singular subject takes "{s3}"'
  elif kind == 'sva_plural':
    base, s3, rest = rng.choice(_SVA)
    subj = rng.choice(_PLURAL_SUBJECTS)
    bad, good, wrong, right = (
      f'{subj} {s3} {rest}.',
      f'{subj} {base} {rest}.',
      s3,
      base,
    )
    why = f'a plural subject takes "{base}"'
  elif kind == 'tense':
    base, past, _, s3 = rng.choice(tb.VERBS)
    subj, t, obj = rng.choice(_SUBJECTS), rng.choice(_TIME), _PAST_OBJ[base]
    bad = f'{t}, {subj[0].lower() + subj[1:]} {s3} {obj}.'
    good, wrong, right = bad.replace(f' {s3} ', f' {past} '), s3, past
    why = f'"{t.lower()}" needs the past tense'
  elif kind == 'participle':
    base, past, pp, _ = rng.choice([v for v in tb.VERBS if v[1] != v[2]])
    subj = rng.choice(_SUBJECTS)
    bad, good, wrong, right = (
      f'{subj} has {past} {_PAST_OBJ[base]}.',
      f'{subj} has {pp} {_PAST_OBJ[base]}.',
      f'has {past}',
      f'has {pp}',
    )
    why = 'the present perfect uses the past participle'
  elif kind == 'article':
    noun, ctx = rng.choice(_A_AN)
    subj = rng.choice(_SUBJECTS)
    good_art, bad_art = _an(noun), 'a' if _an(noun) == 'an' else 'an'
    bad, good = (
      f'{subj} {ctx.format(x=f"{bad_art} {noun}")}.',
      f'{subj} {ctx.format(x=f"{good_art} {noun}")}.',
    )
    wrong, right = f'{bad_art} {noun}', f'{good_art} {noun}'
    why = f'use "{good_art}" before {"a vowel" if good_art == "an" else "a consonant"} sound'
  elif kind == 'plural':
    sing, plur = rng.choice([p for p in tb.PLURALS if p[0] != p[1]])
    n = rng.choice(['two', 'three', 'four', 'five', 'several', 'many'])
    frame = rng.choice(
      [
        'I saw {x} in the picture.',
        'There were {x} in the story.',
        'We counted {x} on the list.',
      ]
    )
    bad, good = frame.format(x=f'{n} {sing}'), frame.format(x=f'{n} {plur}')
    wrong, right, why = f'{n} {sing}', f'{n} {plur}', 'the noun must be plural'
  elif kind == 'comparative':
    adj, comp = rng.choice(tb.ADJ_COMPARATIVES)
    thing = rng.choice(
      ['box', 'house', 'road', 'room', 'car', 'dog', 'river', 'bag']
    )
    bad, good = (
      f'This {thing} is more {comp} than that one.',
      f'This {thing} is {comp} than that one.',
    )
    wrong, right, why = f'more {comp}', comp, f'"{comp}" is already comparative'
  else:
    thing = rng.choice(
      ['money', 'time', 'homework', 'milk', 'news', 'luggage', 'advice']
    )
    subj = rng.choice(['I', 'We', 'They'])
    bad, good = (
      f"{subj} don't have no {thing}.",
      f"{subj} don't have any {thing}.",
    )
    wrong, right, why = 'no', 'any', 'avoid a double negative'
  q = rng.choice([
    'Fix the grammar in this sentence: {s}', 'Correct the following sentence: {s}',
    "There's a grammatical error here. Please fix it: {s}", 'Can you correct the grammar? "{s}"',
    'Edit this sentence so it is grammatically correct: {s}', 'Proofread: {s}',
    'Find and fix the mistake in: {s}', 'Rewrite the sentence with correct grammar.\n\n{s}',
  ]).format(s=bad)  # fmt: skip
  return q, f'Corrected: {good}\nChange: "{wrong}" → "{right}" ({why}).'
