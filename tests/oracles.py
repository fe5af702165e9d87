"""Scripted root programs for the environment tests: an oracle that solves a task by code in
the REPL, and a deliberately wrong variant whose score the metric predicts."""

from __future__ import annotations

from typing import Any

from environments import Task

#: Small instances of every environment, as constructor options (the form `--option` and
#: `--env.taskset.options` take).
OPTIONS: dict[str, dict[str, Any]] = {
    "oolong": {"context_tokens": 1500, "labels": True},
    "math_python": {},
    "niah": {"length": 20_000, "needles": 2},
    "deepdive": {},
    "verbatim_copy": {"mean_fragment_length": 20},
    "oolong_pairs": {"context_tokens": 1500, "labels": True},
    "browsecomp_plus": {"documents": 60},
    "codeqa": {"files": 8},
    "s_niah": {"lengths": [500, 1000, 2000]},
}

_OOLONG = """
import re, collections, datetime
rows = [dict(part.split(': ', 1) for part in line.split(' || ')) for line in context.splitlines()[1:]]
counts = collections.Counter(r['Label'] for r in rows)
q = {question!r}
named = re.findall(r"label '([^']+)'", q)
if q.startswith('How many'):
    out = f"Answer: {{counts[named[0]] + {offset}}}"
elif 'most common?' in q:
    out = 'Label: ' + max(counts, key=counts.get)
elif 'least common?' in q:
    out = 'Label: ' + min(counts, key=counts.get)
elif 'more common, less common' in q:
    a, b = named
    relation = 'more common than' if counts[a] > counts[b] else 'less common than'
    out = f'Answer: {{a}} is {{relation}} {{b}}'
elif q.startswith('On which date'):
    first = min(datetime.datetime.strptime(r['Date'], '%b %d, %Y') for r in rows if r['Label'] == named[0])
    out = 'Date: ' + first.strftime('%b %d, %Y')
else:
    users = collections.Counter(r['User'] for r in rows if r['Label'] == named[0])
    out = 'User: ' + users.most_common(1)[0][0]
if {offset} and not q.startswith('How many'):
    out = 'Answer: none of them'
answer['content'] = out
answer['ready'] = True
"""

_MATH = """
import re, sympy
q = {question!r}
x = sympy.Symbol('x')
if q.startswith('Solve'):
    a, b, c = map(int, re.findall(r'-?\\d+', q)[:3])
    value = sympy.Rational(c - b, a)
elif 'integral' in q:
    m = re.search(r'integral of (.+) dx from (-?\\d+) to (-?\\d+)', q)
    value = sympy.integrate(sympy.sympify(m.group(1)), (x, int(m.group(2)), int(m.group(3))))
elif q.startswith('Compute the sum'):
    k, n = map(int, re.search(r'i\\*\\*(\\d+) for i = 1 to (\\d+)', q).groups())
    value = sum(i**k for i in range(1, n + 1))
elif ' mod ' in q:
    a, b, m = map(int, re.search(r'(\\d+)\\*\\*(\\d+) mod (\\d+)', q).groups())
    value = pow(a, b, m)
elif 'determinant' in q:
    value = sympy.Matrix(eval(re.search(r'matrix (\\[.*\\])', q).group(1))).det()
else:
    a, b = map(int, re.findall(r'\\d+', q)[:2])
    value = sympy.Rational(sympy.ilcm(a, b), sympy.igcd(a, b))
answer['content'] = str(value + {offset})
answer['ready'] = True
"""

_NIAH = """
import re
keys = re.findall(r"'(\\w+)'", {question!r})
values = [re.search(r'magic number for %s is (\\d+)' % k, context).group(1) for k in keys]
answer['content'] = ', '.join(values[:len(values) - {offset}])
answer['ready'] = True
"""

_DEEPDIVE = """
import re
q = {question!r}
docs = {{d['title']: d['text'] for d in context}}
occupation, year, country = re.search(
    r'(?:A|the) (\\w+) (?:who )?studied at the university founded in (\\d+) in a city of (\\w+)', q).groups()
country_of = {{t: re.search(r'a city in (\\w+)', x).group(1) for t, x in docs.items() if ' is a city in ' in x}}
uni = next(t for t, x in docs.items() if t.startswith('University of') and f'founded in {{year}} in the city of' in x
           and country_of[x.rsplit(' ', 1)[1].rstrip('.')] == country)
person = next(t for t, x in docs.items() if f'was a {{occupation}}.' in x and f'studied at the {{uni}}' in x)
company = re.search(r'later founded (.+)\\.$', docs[person]).group(1)
out = re.search(r'headquartered in (\\w+)', docs[company]).group(1) if 'headquarters' in q else company
answer['content'] = out if not {offset} else 'Nobody'
answer['ready'] = True
"""

# Reads the rule from the question's wording (not from the environment's encoding of it), so a
# mismatch between the paper's text and the encoded rule fails the oracle test.
_OOLONG_PAIRS = """
import re, itertools, collections, datetime
q = {question!r}
LABELS = ['description and abstract concept', 'entity', 'human being', 'numeric value', 'location', 'abbreviation']
users = collections.defaultdict(list)
for m in re.finditer(r'^Date: (.+?) \\|\\| User: (\\d+) \\|\\| Instance: .* \\|\\| Label: (.+)$', context, re.M):
    users[int(m.group(2))].append((m.group(3), datetime.datetime.strptime(m.group(1), '%b %d, %Y').date()))
cond = q.split('list lower ID first) ', 1)[1].split('. Each of the questions', 1)[0]
if cond.startswith('where both'):
    head, _, dated = cond.partition(', and all instances that are ')
    wanted = [l for l in LABELS if l in head]
    rule = re.match(r'an? (.+) for both users must be (after|before) (.+)$', dated) if dated else None
    day = datetime.datetime.strptime(rule.group(3), '%B %d, %Y').date() if rule else None
    def ok(p):
        timely = all((d > day) if rule.group(2) == 'after' else (d < day) for l, d in p if l == rule.group(1)) if rule else True
        return any(l in wanted for l, _ in p) and timely
    holds = lambda a, b: ok(a) and ok(b)
else:
    one, other = cond[len('such that one user has '):].split(', and the other user has ')
    def needs(text):
        out, quantifier = [], 'at least'
        for m in re.finditer(r'(?:(at least|exactly) )?(one|two) (?:instances? )?with (' + '|'.join(LABELS) + ')', text):
            quantifier = m.group(1) or quantifier
            out.append((m.group(3), quantifier, 1 if m.group(2) == 'one' else 2))
        return out
    def meets(p, rules):
        counts = collections.Counter(l for l, _ in p)
        return all(counts[l] >= n if quantifier == 'at least' else counts[l] == n for l, quantifier, n in rules)
    holds = lambda a, b: (meets(a, needs(one)) and meets(b, needs(other))) or (meets(b, needs(one)) and meets(a, needs(other)))
pairs = [(a, b) for a, b in itertools.combinations(sorted(users), 2) if holds(users[a], users[b])]
pairs = pairs[:len(pairs) // 2] if {offset} else pairs
answer['content'] = '\\n'.join(f'({{a}}, {{b}})' for a, b in pairs)
answer['ready'] = True
"""

_CODEQA = """
import re, ast
q = {question!r}
question = re.search(r'What is the correct answer to this question: (.*)\\nChoices:', q).group(1)
choices = re.findall(r'^\\(([A-D])\\) (.*)$', q, re.M)
files = dict(part.split('\\n', 1) for part in context.split('# File: ')[1:])
defs = {{node.name: (path, node) for path, source in files.items() for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef)}}
calls = lambda node: {{c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}}
name = re.findall(r'`(\\w+)`', question)[-1]
if question.startswith('Which file'):
    right = defs[name][0]
elif question.startswith('What is the default'):
    right = str(defs[name][1].args.defaults[0].value)
elif question.startswith('Which of these'):
    right = next(choice for _, choice in choices if choice in calls(defs[name][1]))
else:
    right = str(sum(name in calls(node) for _, node in defs.values()))
letter = next(letter for letter, choice in choices if choice == right)
letter = 'ABCD'[('ABCD'.index(letter) + {offset}) % 4]
answer['content'] = f'The correct answer is ({{letter}})'
answer['ready'] = True
"""

_BROWSECOMP_PLUS = """
import re
q = {question!r}
occupation, born, river = re.search(r'A (\\w+) born in (\\d+) in a city on the river (\\w+)', q).groups()
texts = {{d['docid']: d['text'] for d in context}}
cities = {{}}
for docid, text in texts.items():
    m = re.match(r'(\\w+)\\n\\1 is a city in \\w+ on the river (\\w+)\\.', text)
    if m:
        cities[m.group(1)] = (docid, m.group(2))
for person_doc, text in texts.items():
    m = re.match(r'(.+)\\n\\1 was a (\\w+) born in (\\d+) in (\\w+)\\. In \\d+ \\w+ founded (.+?)\\.', text)
    if m and m.group(2) == occupation and m.group(3) == born and cities[m.group(4)][1] == river:
        break
company = m.group(5) if not {offset} else next(t.split('\\n')[0] for t in texts.values()
                                              if ' was founded in ' in t and not t.startswith(m.group(5)))
company_doc = next(d for d, t in texts.items() if t.startswith(company + '\\n'))
product = re.search(r'Its first product was the (.+?)\\.', texts[company_doc]).group(1)
answer['content'] = (f"Explanation: the person [{{person_doc}}] was born in {{m.group(4)}} [{{cities[m.group(4)][0]}}] "
                     f"and founded {{company}} [{{company_doc}}].\\n"
                     f"Exact Answer: {{product if 'first product' in q else company}}\\nConfidence: 90%")
answer['ready'] = True
"""


def oracle_code(environment: str, task: Task, *, wrong: bool = False) -> str:
    """Code that answers `task` correctly, or (wrong=True) the environment's typical mistake:
    a count off by 2, a value off by 1, a dropped needle, a wrong name, a dropped last character,
    half of the pairs missed, the neighbouring choice, another founder's company."""
    offset = 2 if environment == "oolong" and wrong else int(wrong)
    if environment == "verbatim_copy":
        text = task.expected[:-1] if wrong else task.expected
        return f"answer['content'] = {text!r}\nanswer['ready'] = True"
    template = {"oolong": _OOLONG, "math_python": _MATH, "niah": _NIAH, "s_niah": _NIAH, "deepdive": _DEEPDIVE,
                "oolong_pairs": _OOLONG_PAIRS, "codeqa": _CODEQA, "browsecomp_plus": _BROWSECOMP_PLUS}[environment]
    return template.format(question=task.prompt, offset=offset)
