"""Voice-assistant command templates and the vocabulary they span.

Every sentence the built-in corpus can speak is an expansion of one template below: a
template is a string with ``{slot}`` fields, each slot a list of words or phrases. The
full expansion is enumerated once, in a fixed order, so a seed picks the same held-out
sentences on every machine.

Example:
    >>> from compress.data.templates import all_sentences, vocabulary
    >>> "turn on the kitchen lights" in all_sentences()
    True
    >>> 80 <= len(vocabulary()) <= 150
    True
"""

from __future__ import annotations

import functools
import itertools
import re

ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway",
         "dining room", "basement", "garden"]
DEVICES = ["lights", "lamp", "fan", "heater", "television", "radio", "speaker", "coffee machine"]
OPENABLE = ["door", "front door", "garage door", "blinds", "curtains", "window"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "fifteen", "twenty", "thirty", "forty", "forty five", "fifty",
           "sixty", "ninety"]
HOURS = NUMBERS[:12]
UNITS = ["seconds", "minutes", "hours"]
CONTACTS = ["mom", "dad", "grandma", "grandpa", "john", "sarah", "david", "emma", "the office",
            "my sister", "my brother", "the doctor"]
GENRES = ["jazz", "rock", "pop", "classical music", "the radio", "some music", "my playlist",
          "the news", "a podcast", "rain sounds"]
DAYS = ["today", "tomorrow", "tonight", "this weekend", "on monday", "on friday"]
TEMPS = ["sixteen", "eighteen", "nineteen", "twenty", "twenty one", "twenty two"]
TASKS = ["buy milk", "call mom", "water the plants", "take out the trash", "feed the cat",
         "walk the dog", "pay the bills"]
PERIODS = ["in the morning", "in the evening", "at night"]

# (template, slots). Slot lists are shared so every word is seen in many contexts.
TEMPLATES: list[tuple[str, dict[str, list[str]]]] = [
    ("turn {onoff} the {room} {device}", {"onoff": ["on", "off"], "room": ROOMS, "device": DEVICES}),
    ("turn {onoff} the {device} in the {room}", {"onoff": ["on", "off"], "device": DEVICES, "room": ROOMS}),
    ("switch {onoff} the {device}", {"onoff": ["on", "off"], "device": DEVICES}),
    ("{dim} the {room} lights", {"dim": ["dim", "brighten"], "room": ROOMS}),
    ("set the {room} lights to {number} percent", {"room": ROOMS, "number": NUMBERS}),
    ("{openclose} the {thing}", {"openclose": ["open", "close", "lock", "unlock"], "thing": OPENABLE}),
    ("{openclose} the {room} {thing}", {"openclose": ["open", "close"], "room": ROOMS, "thing": ["blinds", "curtains", "window", "door"]}),
    ("set a timer for {number} {unit}", {"number": NUMBERS, "unit": UNITS}),
    ("cancel the {kind}", {"kind": ["timer", "alarm", "reminder"]}),
    ("set an alarm for {hour} {period}", {"hour": HOURS, "period": PERIODS}),
    ("wake me up at {hour} {period}", {"hour": HOURS, "period": PERIODS}),
    ("call {contact}", {"contact": CONTACTS}),
    ("call {contact} on speaker", {"contact": CONTACTS}),
    ("send a message to {contact}", {"contact": CONTACTS}),
    ("play {genre}", {"genre": GENRES}),
    ("play {genre} in the {room}", {"genre": GENRES, "room": ROOMS}),
    ("stop the music in the {room}", {"room": ROOMS}),
    ("turn the volume {updown}", {"updown": ["up", "down"]}),
    ("set the volume to {number}", {"number": NUMBERS[:10]}),
    ("{media} the music", {"media": ["pause", "stop", "resume"]}),
    ("skip to the next song", {}),
    ("what is the weather {day}", {"day": DAYS}),
    ("will it rain {day}", {"day": DAYS}),
    ("set the {room} temperature to {temp} degrees", {"room": ROOMS, "temp": TEMPS}),
    ("set the heating to {temp} degrees", {"temp": TEMPS}),
    ("remind me to {task} {day}", {"task": TASKS, "day": DAYS}),
    ("remind me to {task} in {number} minutes", {"task": TASKS, "number": NUMBERS}),
    ("what time is it", {}),
]

_SLOT = re.compile(r"\{(\w+)\}")


def expand(template: str, slots: dict[str, list[str]]) -> list[str]:
    """Every sentence of one template, in slot order.

    Example:
        >>> expand("call {who}", {"who": ["mom", "dad"]})
        ['call mom', 'call dad']
    """
    names = _SLOT.findall(template)
    missing = [n for n in names if n not in slots]
    if missing:
        raise ValueError(f"slots: template {template!r} needs {missing}, found keys {sorted(slots)}")
    out = []
    parts = _SLOT.split(template)  # literal text at even indices, slot names at odd ones
    for values in itertools.product(*(slots[n] for n in names)):
        filled = list(parts)
        filled[1::2] = values
        out.append("".join(filled))
    return out


@functools.lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """All distinct sentences, in a fixed order (duplicates across templates kept once)."""
    seen: dict[str, None] = {}
    for template, slots in TEMPLATES:
        for s in expand(template, slots):
            seen.setdefault(" ".join(s.split()), None)
    return tuple(seen)


def template_of() -> list[int]:
    """For each sentence of ``all_sentences()``, the index of the first template that yields it."""
    first: dict[str, int] = {}
    for t, (template, slots) in enumerate(TEMPLATES):
        for s in expand(template, slots):
            first.setdefault(" ".join(s.split()), t)
    return [first[s] for s in all_sentences()]


def vocabulary() -> list[str]:
    """The sorted set of words used by the templates."""
    return sorted({w for s in all_sentences() for w in s.split()})
