"""A generated "household week" of announcements (deterministic for a seed), and what it costs.

The week is made of the kinds of things smart-home owners make their speakers say: door and
appliance notices repeated many times a day, a morning routine, and some phrases templated
with a number that changes (minutes, degrees, percent). It is a model, not a recording: the
mix is stated in ``FIXED`` / ``TEMPLATED`` below so anyone can judge it.

``project_clause_cache`` replays the same trace offline through two cache designs that
coze_speaker does not have (yet), to show what they would save:

* ``clauses``: cache each clause (split after , ; : and sentence ends) separately;
* ``clauses+numbers``: also cut every run of digits out as its own cached piece, so
  "It is 7 degrees outside" is "It is" + "7" + "degrees outside".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

#: (text, times per day on average, hours it may happen in)
FIXED: List[Tuple[str, float, Tuple[int, int]]] = [
    ("The front door is open", 6.0, (7, 22)),
    ("The front door has been left open", 1.0, (7, 22)),
    ("Someone is at the front door", 2.0, (9, 20)),
    ("Dinner is ready", 1.0, (18, 20)),
    ("Lunch is ready", 0.4, (12, 13)),
    ("Good morning, the coffee is ready", 1.0, (6, 8)),
    ("Time to leave for school", 0.7, (7, 8)),
    ("The dishwasher has finished", 1.0, (13, 22)),
    ("The dryer has finished", 0.5, (10, 21)),
    ("The mail has arrived", 0.8, (10, 13)),
    ("The garage door is open", 2.0, (7, 21)),
    ("Motion in the garden", 1.5, (0, 24)),
    ("Please close the balcony door, it is raining", 0.3, (8, 20)),
    ("Good night, all doors are locked", 1.0, (22, 23)),
    ("The alarm is armed", 1.0, (22, 23)),
    ("The alarm is disarmed", 1.0, (6, 7)),
    ("Remember to take out the bins", 1.0 / 7, (19, 20)),
    ("The kettle has boiled", 1.5, (7, 21)),
]

#: (template, times per day on average, hours, value generator name)
TEMPLATED: List[Tuple[str, float, Tuple[int, int], str]] = [
    ("The washing machine finished, {} minutes", 0.8, (9, 21), "wash_minutes"),
    ("It is {} degrees outside", 1.0, (6, 8), "temperature"),
    ("The bus leaves in {} minutes", 1.2, (7, 8), "bus_minutes"),
    ("The oven has reached {} degrees", 0.4, (17, 19), "oven"),
    ("The battery of the smoke detector is at {} percent", 1.0 / 7, (10, 20), "battery"),
    ("Your timer of {} minutes is done", 0.6, (8, 21), "timer"),
]


@dataclass(frozen=True)
class Item:
    day: int
    second: int  # of the day
    text: str
    kind: str  # "fixed" or "templated"
    template: str


def _value(name: str, rng: random.Random, day_temp: int) -> int:
    if name == "wash_minutes":
        return rng.choice([39, 45, 49, 59, 62, 75, 89, 95, 118])  # programme lengths, a few of them
    if name == "temperature":
        return day_temp
    if name == "bus_minutes":
        return rng.randint(2, 12)
    if name == "oven":
        return rng.choice([160, 180, 200, 220])
    if name == "battery":
        return rng.randint(5, 30)
    if name == "timer":
        return rng.choice([3, 5, 8, 10, 12, 15, 20, 25, 30, 45])
    raise ValueError(name)


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth; means here are small
    import math
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def week(seed: int = 7, days: int = 7) -> List[Item]:
    """The announcements of ``days`` days, in time order."""
    rng = random.Random(seed)
    items: List[Item] = []
    temp = rng.randint(4, 12)
    for day in range(days):
        temp = max(-5, min(28, temp + rng.randint(-3, 3)))  # a slowly wandering morning temperature
        for text, per_day, (h0, h1) in FIXED:
            for _ in range(_poisson(rng, per_day)):
                items.append(Item(day, rng.randrange(h0 * 3600, h1 * 3600), text, "fixed", text))
        for template, per_day, (h0, h1), gen in TEMPLATED:
            for _ in range(_poisson(rng, per_day)):
                text = template.format(_value(gen, rng, temp))
                items.append(Item(day, rng.randrange(h0 * 3600, h1 * 3600), text, "templated", template))
    items.sort(key=lambda i: (i.day, i.second))
    return items


_CLAUSE = re.compile(r"(?<=[,;:.!?])\s+")
_DIGITS = re.compile(r"(\d+)")


def clauses(text: str) -> List[str]:
    return [c.strip(" ,;:") for c in _CLAUSE.split(text) if c.strip(" ,;:")]


def clauses_and_numbers(text: str) -> List[str]:
    out: List[str] = []
    for clause in clauses(text):
        out.extend(p.strip() for p in _DIGITS.split(clause) if p.strip())
    return out


def project_clause_cache(items: Iterable[Item], warmup_days: int = 1) -> Dict[str, Dict[str, float]]:
    """Coze calls per announcement after warm-up, under three cache designs (offline replay)."""
    designs = {"whole phrase (today)": lambda t: [t], "clauses": clauses,
               "clauses+numbers": clauses_and_numbers}
    out: Dict[str, Dict[str, float]] = {}
    items = list(items)
    for name, split in designs.items():
        seen: set = set()
        calls = anns = 0
        for item in items:
            new = [p for p in split(item.text) if p not in seen]
            seen.update(new)
            if item.day >= warmup_days:
                anns += 1
                calls += len(new)
        out[name] = {"calls": calls, "announcements": anns, "ratio": calls / anns if anns else 0.0}
    return out
