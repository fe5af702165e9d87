"""Scripted root programs for the environment tests: an oracle that solves a task by code in
the REPL, and a deliberately wrong variant whose score the metric predicts."""

from __future__ import annotations

from environments import Task

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


def oracle_code(environment: str, task: Task, *, wrong: bool = False) -> str:
    """Code that answers `task` correctly, or (wrong=True) the environment's typical mistake:
    a count off by 2, a value off by 1, a dropped needle, a wrong name, a dropped last character."""
    offset = 2 if environment == "oolong" and wrong else int(wrong)
    if environment == "verbatim_copy":
        text = task.expected[:-1] if wrong else task.expected
        return f"answer['content'] = {text!r}\nanswer['ready'] = True"
    template = {"oolong": _OOLONG, "math_python": _MATH, "niah": _NIAH, "deepdive": _DEEPDIVE}[environment]
    return template.format(question=task.prompt, offset=offset)
