"""Smart-home intent task: seeded commands paired with one-line JSON intents.

The demo task for small on-device models. Each example is a natural-language command
("could you dim the kitchen lights to 40%?") and its intent with slots
(``{"intent": "set_brightness", "room": "kitchen", "value": 40}``). All phrasings come from
the templates in this file, and one seed always gives the same splits.

Slot conventions:

- ``device``: a name from the device tables below (``light``, ``fan``, ``heater``, ``tv``,
  ``ac``, ``speaker``, ``blinds``, ``curtains``, ``window``, ``front door``, ...). The intents
  ``set_temperature``, ``set_brightness`` and ``play_music`` imply their device and never
  carry this slot.
- ``room``: a canonical room name (``kitchen``, ``living room``, ...), also when the command
  uses another word for it ("lounge" gives ``living room``).
- ``value``: an int. Degrees Celsius for ``set_temperature``, percent for ``set_brightness``
  and ``set_volume``; "mute" gives volume 0.
- ``time``: a clock time as ``"HH:MM"`` (24 h) or a duration in whole minutes as ``"<N>m"``
  ("an hour and a half" gives ``"90m"``). ``set_alarm`` takes clock times, ``set_timer``
  durations, and ``turn_on``/``turn_off`` either.
- ``unknown``: chit-chat, requests outside the home (weather, shopping), devices the task does
  not cover (oven, dishwasher) and requests without a clear target ("turn it on"). It never
  has slots.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

logger = logging.getLogger(__name__)

INTENTS: tuple[str, ...] = (
    "turn_on",
    "turn_off",
    "set_temperature",
    "set_brightness",
    "set_volume",
    "open",
    "close",
    "lock",
    "unlock",
    "play_music",
    "set_timer",
    "set_alarm",
    "unknown",
)

# The order of the slots in an answer. A fixed order lets a model learn one layout.
SLOTS: tuple[str, ...] = ("device", "room", "value", "time")

# Kept short: every training and inference step pays for these tokens.
SYSTEM_PROMPT = (
    'Reply with one line of JSON: "intent", then any of "device", "room", "value", "time". '
    "Intents: " + ", ".join(INTENTS) + "."
)


@dataclass(frozen=True)
class Example:
    """One command and its intent dict, which has ``"intent"`` plus any of ``SLOTS``.

    Examples compare by value but are not hashable, because ``intent`` is a dict.
    """

    command: str
    intent: dict

    def __post_init__(self) -> None:
        if not isinstance(self.intent, dict):
            raise TypeError(f"intent must be a dict, got {type(self.intent).__name__}")
        name = self.intent.get("intent")
        if name not in INTENTS:
            raise ValueError(
                f"invalid intent {name!r} in {self.intent!r}. Expected one of {INTENTS}"
            )

        extra = [key for key in self.intent if key != "intent" and key not in SLOTS]
        if extra:
            raise ValueError(
                f"invalid slot keys {extra} in {self.intent!r}. Expected any of {SLOTS}"
            )

        if name == "unknown" and len(self.intent) > 1:
            raise ValueError(f"intent 'unknown' takes no slots, got {self.intent!r}")

    @property
    def answer(self) -> str:
        """Canonical one-line JSON of the intent, keys in the order intent, then ``SLOTS``."""
        ordered = {"intent": self.intent["intent"]}
        for slot in SLOTS:
            if slot in self.intent:
                ordered[slot] = self.intent[slot]
        return json.dumps(ordered, separators=(", ", ": "))


def chat_messages(command: str) -> list[dict]:
    """Build the chat for one command: the system prompt, then the command as the user turn."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": command},
    ]


def normalize_command(text: str) -> str:
    """Lowercase a command, drop punctuation and collapse whitespace.

    Two commands with the same normalized text count as duplicates in ``make_splits``. This is
    stricter than comparing lowercased text alone, so "Lights on!" and "lights on" never land
    in different splits.
    """
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


# --- vocabulary -----------------------------------------------------------------------------
# Each table maps the canonical slot value to the words a command may use for it.

ROOMS: dict[str, tuple[str, ...]] = {
    "kitchen": ("kitchen",),
    "bedroom": ("bedroom",),
    "living room": ("living room", "lounge"),
    "bathroom": ("bathroom",),
    "office": ("office", "study"),
    "hallway": ("hallway", "hall"),
    "dining room": ("dining room",),
    "kids room": ("kids room", "kids' room"),
    "basement": ("basement",),
    "guest room": ("guest room", "spare room"),
}

SWITCH_DEVICES: dict[str, tuple[str, ...]] = {
    "light": ("light", "lights", "lamp"),
    "fan": ("fan", "ceiling fan"),
    "heater": ("heater", "heating", "radiator"),
    "tv": ("tv", "television"),
    "ac": ("ac", "air conditioner", "air conditioning"),
    "speaker": ("speaker", "smart speaker"),
}

COVER_DEVICES: dict[str, tuple[str, ...]] = {
    "blinds": ("blinds", "shades"),
    "curtains": ("curtains", "drapes"),
    "window": ("window", "windows"),
    "garage door": ("garage door",),
}

LOCK_DEVICES: dict[str, tuple[str, ...]] = {
    "front door": ("front door",),
    "back door": ("back door",),
    "side door": ("side door",),
    "garage door": ("garage door",),
}

VOLUME_DEVICES: dict[str, tuple[str, ...]] = {
    "tv": ("tv", "television"),
    "speaker": ("speaker", "smart speaker"),
}

# Devices outside the task. Commands about them map to "unknown", which teaches the model
# that a known verb ("turn on", "open", "set ... to 200 degrees") alone is not enough.
UNSUPPORTED_DEVICES = (
    "dishwasher",
    "washing machine",
    "dryer",
    "fridge",
    "oven",
    "microwave",
    "vacuum",
    "car",
    "printer",
    "kettle",
    "toaster",
)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(number: int) -> str:
    """Spell an integer from 0 to 100 in English words ("forty-five")."""
    if number == 100:
        return "one hundred"
    if number < 20:
        return _ONES[number]
    tens, ones = divmod(number, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]}-{_ONES[ones]}"


# --- phrase helpers -------------------------------------------------------------------------

Slots = dict[str, object]
# A template returns the bare command, its slots (without "intent") and its decoration style.
Template = Callable[[random.Random], tuple[str, Slots, str]]


def _slots(**values: object) -> Slots:
    return {key: value for key, value in values.items() if value is not None}


def _pick(rng: random.Random, table: dict[str, tuple[str, ...]]) -> tuple[str, str]:
    """Draw a canonical value and one of its surface words."""
    canonical = rng.choice(list(table))
    return canonical, rng.choice(table[canonical])


def _maybe_room(rng: random.Random, p: float) -> tuple[str | None, str | None]:
    if rng.random() < p:
        return _pick(rng, ROOMS)
    return None, None


def _two_rooms(rng: random.Random) -> tuple[str, str, str, str]:
    """Draw a target room and a different distractor room: (room, word, other, other word)."""
    room, other = rng.sample(list(ROOMS), 2)
    return room, rng.choice(ROOMS[room]), other, rng.choice(ROOMS[other])


def _where(room_word: str | None) -> str:
    return f"in the {room_word}" if room_word else "in here"


def _one_or_ones(device_word: str) -> str:
    """Return "ones" for a plural device word, so "not the kitchen ones" agrees with "lights"."""
    return "ones" if device_word.endswith("s") else "one"


def _device_phrase(rng: random.Random, device_word: str, room_word: str | None) -> str:
    if room_word is None:
        return f"the {device_word}"
    if rng.random() < 0.5:
        return f"the {room_word} {device_word}"
    return f"the {device_word} in the {room_word}"


def _number_phrase(rng: random.Random, number: int, unit: str) -> str:
    """Write a number as digits or words, with an optional unit word ("21 degrees")."""
    spelled = _number_words(number) if rng.random() < 0.3 else str(number)
    return f"{spelled} {unit}" if unit else spelled


def _period_word(hour: int) -> str | None:
    if 5 <= hour <= 11:
        return "in the morning"
    if 13 <= hour <= 17:
        return "in the afternoon"
    if 18 <= hour <= 21:
        return "in the evening"
    if hour >= 22:
        return "at night"
    return None


def _random_clock(rng: random.Random) -> tuple[int, int]:
    return rng.randrange(24), rng.choice((0, 0, 0, 5, 10, 15, 20, 30, 30, 40, 45, 50))


def _clock_phrase(rng: random.Random, hour: int, minute: int) -> str:
    """Write a clock time in a spoken form ("7:30 pm", "half past seven in the evening")."""
    hour12 = hour % 12 or 12
    meridiem = "am" if hour < 12 else "pm"
    period = _period_word(hour)
    options = [f"{hour:02d}:{minute:02d}"]

    if minute == 0:
        options += [
            f"{hour12} {meridiem}",
            f"{hour12}{meridiem}",
            f"{_number_words(hour12)} {meridiem}",
        ]
        if period:
            options += [f"{hour12} {period}", f"{_number_words(hour12)} o'clock {period}"]
    else:
        options += [f"{hour12}:{minute:02d} {meridiem}", f"{hour12}:{minute:02d}{meridiem}"]
        if period:
            minute_words = _number_words(minute) if minute >= 10 else f"oh {_number_words(minute)}"
            options.append(f"{_number_words(hour12)} {minute_words} {period}")
            if minute == 15:
                options.append(f"quarter past {_number_words(hour12)} {period}")
            if minute == 30:
                options.append(f"half past {_number_words(hour12)} {period}")
        # "Quarter to" names the next hour, so it needs that hour's period and must not
        # cross noon or midnight, where the period would change.
        next_period = _period_word(hour + 1) if hour < 23 else None
        if minute == 45 and next_period and (hour + 1) % 12 != 0:
            options.append(f"quarter to {_number_words((hour + 1) % 12)} {next_period}")

    if (hour, minute) == (12, 0):
        options += ["noon", "midday"]
    if (hour, minute) == (0, 0):
        options.append("midnight")
    return rng.choice(options)


def _random_minutes(rng: random.Random) -> int:
    if rng.random() < 0.3:
        return rng.randint(1, 59)
    return rng.choice((1, 2, 3, 5, 5, 10, 10, 15, 20, 25, 30, 30, 40, 45, 60, 75, 90, 120, 180))


def _duration_phrase(rng: random.Random, minutes: int) -> str:
    """Write a duration given in minutes in one of its spoken forms ("half an hour", "2 hours")."""
    hours, rest = divmod(minutes, 60)
    options = []

    if minutes == 1:
        options += ["1 minute", "one minute", "a minute"]
    elif minutes < 60:
        options += [f"{minutes} minutes", f"{_number_words(minutes)} minutes", f"{minutes} min"]
    elif rest == 0:
        if hours == 1:
            options += ["an hour", "one hour", "1 hour", "60 minutes"]
        else:
            options += [f"{hours} hours", f"{_number_words(hours)} hours"]
    else:
        hour_word = "hour" if hours == 1 else "hours"
        options += [
            f"{hours} {hour_word} and {rest} minutes",
            f"{hours} {hour_word} {rest} minutes",
        ]

    if minutes == 15:
        options.append("a quarter of an hour")
    if minutes == 30:
        options += ["half an hour", "half hour"]
    if minutes == 90:
        options += ["an hour and a half", "90 minutes"]
    if minutes == 120:
        options.append("120 minutes")
    return rng.choice(options)


def _time_slot(rng: random.Random) -> tuple[str, str]:
    """Draw a clock time or a duration: (phrase with "at"/"in", normalized time slot)."""
    if rng.random() < 0.5:
        hour, minute = _random_clock(rng)
        return f"at {_clock_phrase(rng, hour, minute)}", f"{hour:02d}:{minute:02d}"
    minutes = _random_minutes(rng)
    return f"in {_duration_phrase(rng, minutes)}", f"{minutes}m"


# --- decoration -----------------------------------------------------------------------------
# Fillers change the wording but never the slots: "after dinner" is not a time slot.

_QUESTION_PREFIXES = ("can you ", "could you ", "could you please ", "would you ")
_IMPERATIVE_PREFIXES = _QUESTION_PREFIXES + (
    "please ",
    "hey, ",
    "ok, ",
    "i need you to ",
    "go ahead and ",
    "hey assistant, ",
)
_IMPERATIVE_TAILS = (
    " please",
    " thanks",
    ", thank you",
    " after dinner",
    " when you get a chance",
    " for the kids",
    " while i cook",
    " before the guests arrive",
    " if you can",
)
_STATEMENT_PREFIXES = ("hey, ", "ugh, ", "hmm, ", "honestly, ", "just so you know, ")
_STATEMENT_TAILS = (", can you help", ", do something", ", please sort it out", "...")
_TERSE_TAILS = (" please", " pls", " now", " thx")
_QUESTION_STARTS = ("", "", "hey, ", "quick question, ", "so ")
_CONTEXT_PREFIXES = ("hey, ", "ok, ", "so, ")


def _decorate(rng: random.Random, core: str, style: str) -> str:
    """Add fillers, case and punctuation to a bare command in the given style.

    Styles: "imperative" ("turn on ..."), "statement" ("it's too dark ..."), "context" (a
    clause, then an imperative: "i'm in the hall, turn on ..."), "terse" ("kitchen lights
    on"), "question" ("what's the weather ...") and "plain" (no fillers).
    """
    prefix = tail = ""
    if style == "imperative":
        if rng.random() < 0.45:
            prefix = rng.choice(_IMPERATIVE_PREFIXES)
        if rng.random() < 0.35:
            tail = rng.choice(_IMPERATIVE_TAILS)
    elif style == "statement":
        if rng.random() < 0.3:
            prefix = rng.choice(_STATEMENT_PREFIXES)
        if rng.random() < 0.3:
            tail = rng.choice(_STATEMENT_TAILS)
    elif style == "context":
        if rng.random() < 0.3:
            prefix = rng.choice(_CONTEXT_PREFIXES)
        if rng.random() < 0.3:
            tail = rng.choice(_IMPERATIVE_TAILS)
    elif style == "terse":
        if rng.random() < 0.3:
            tail = rng.choice(_TERSE_TAILS)
    elif style == "question":
        prefix = rng.choice(_QUESTION_STARTS)

    text = prefix + core + tail
    # "could you ..., thank you?" reads wrong, so a thanks tail ends the sentence without "?".
    if (prefix in _QUESTION_PREFIXES or style == "question") and "thank" not in tail:
        text += rng.choice(("?", "?", ""))
    elif not text.endswith("..."):
        text += rng.choice(("", "", ".", "!"))

    if rng.random() < 0.7:
        text = re.sub(r"\bi\b", "I", text)
    if rng.random() < 0.4:
        text = text[0].upper() + text[1:]
    return text


# --- templates: turn_on / turn_off ----------------------------------------------------------

_ON_VERBS = ("turn on", "switch on", "power on")
_OFF_VERBS = ("turn off", "switch off", "shut off", "power off")

_ON_HINTS = (
    ("light", "it's too dark {where}"),
    ("light", "i can't see a thing {where}"),
    ("heater", "it's freezing {where}"),
    ("heater", "it's way too cold {where}"),
    ("ac", "it's boiling {where}"),
    ("fan", "the air is so stuffy {where}"),
    ("tv", "i want to watch the news {where}"),
)
_OFF_HINTS = (
    ("light", "nobody is {where} but the lights are still on"),
    ("light", "i'm trying to sleep and the lamp is still on {where}"),
    ("tv", "no one is watching the tv {where}"),
    ("heater", "it's warm enough {where} now, the heater can stop"),
    ("fan", "it's getting chilly {where} with the fan running"),
)


def _switch_direct(rng: random.Random, on: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, SWITCH_DEVICES)
    room, room_word = _maybe_room(rng, 0.7)
    verb = rng.choice(_ON_VERBS if on else _OFF_VERBS)
    target = _device_phrase(rng, device_word, room_word)
    if rng.random() < 0.3:
        # Split particle: "turn the kitchen light on".
        head, particle = verb.split()
        core = f"{head} {target} {particle}"
    else:
        core = f"{verb} {target}"
    return core, _slots(device=device, room=room), "imperative"


def _switch_terse(rng: random.Random, on: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, SWITCH_DEVICES)
    room, room_word = _maybe_room(rng, 0.6)
    state = "on" if on else "off"
    core = f"{room_word} {device_word} {state}" if room_word else f"{device_word} {state}"
    return core, _slots(device=device, room=room), "terse"


def _switch_hint(rng: random.Random, on: bool) -> tuple[str, Slots, str]:
    device, pattern = rng.choice(_ON_HINTS if on else _OFF_HINTS)
    room, room_word = _maybe_room(rng, 0.75)
    return pattern.format(where=_where(room_word)), _slots(device=device, room=room), "statement"


def _switch_other_room(rng: random.Random, on: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, SWITCH_DEVICES)
    room, room_word, _, other_word = _two_rooms(rng)
    verb = rng.choice(_ON_VERBS if on else _OFF_VERBS)
    pronoun = _one_or_ones(device_word)
    core, style = rng.choice(
        (
            (f"{verb} the {room_word} {device_word}, not the {other_word} {pronoun}", "imperative"),
            (f"i'm in the {other_word}, {verb} the {device_word} in the {room_word}", "context"),
            (
                f"leave the {other_word} {device_word} alone and {verb} the {room_word} {pronoun}",
                "imperative",
            ),
            (
                f"{verb} the {device_word} in the {room_word} but not in the {other_word}",
                "imperative",
            ),
        )
    )
    return core, _slots(device=device, room=room), style


def _switch_at_time(rng: random.Random, on: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, SWITCH_DEVICES)
    room, room_word = _maybe_room(rng, 0.5)
    verb = rng.choice(_ON_VERBS if on else _OFF_VERBS)
    when, time = _time_slot(rng)
    target = _device_phrase(rng, device_word, room_word)
    if rng.random() < 0.3:
        core = f"{when}, {verb} {target}"
    else:
        core = f"{verb} {target} {when}"
    return core, _slots(device=device, room=room, time=time), "imperative"


# --- templates: set_temperature -------------------------------------------------------------

_THERMOSTAT_WORDS = ("thermostat", "heating", "temperature")


def _temperature_phrase(rng: random.Random, degrees: int) -> str:
    unit = rng.choice(("degrees", "degrees", "degrees celsius"))
    return _number_phrase(rng, degrees, unit)


def _temperature_set(rng: random.Random) -> tuple[str, Slots, str]:
    degrees = rng.randint(16, 28)
    room, room_word = _maybe_room(rng, 0.6)
    word = rng.choice(_THERMOSTAT_WORDS)
    target = _device_phrase(rng, word, room_word)
    amount = _temperature_phrase(rng, degrees) if rng.random() < 0.7 else str(degrees)
    verb = rng.choice(("set", "change", "put", "adjust"))
    return f"{verb} {target} to {amount}", _slots(room=room, value=degrees), "imperative"


def _temperature_make(rng: random.Random) -> tuple[str, Slots, str]:
    degrees = rng.randint(16, 28)
    room, room_word = _maybe_room(rng, 0.7)
    amount = _temperature_phrase(rng, degrees)
    if room_word and rng.random() < 0.5:
        verb = "warm" if degrees >= 21 else "cool"
        direction = "up" if degrees >= 21 else "down"
        core = f"{verb} the {room_word} {direction} to {amount}"
    else:
        core = f"make it {amount} {_where(room_word)}"
    return core, _slots(room=room, value=degrees), "imperative"


def _temperature_reading(rng: random.Random) -> tuple[str, Slots, str]:
    # The current reading is a distractor: only the requested number is the value.
    degrees = rng.randint(18, 28)
    current = degrees - rng.randint(2, 6)
    room, room_word = _maybe_room(rng, 0.6)
    request = rng.choice(
        ("set the heating to {amount}", "bump it up to {amount}", "make it {amount}")
    ).format(amount=_temperature_phrase(rng, degrees))
    core = f"it's only {current} degrees {_where(room_word)}, {request}"
    return core, _slots(room=room, value=degrees), "context"


def _temperature_terse(rng: random.Random) -> tuple[str, Slots, str]:
    degrees = rng.randint(16, 28)
    room, room_word = _maybe_room(rng, 0.6)
    head = f"{room_word} temperature" if room_word else rng.choice(("thermostat", "temperature"))
    return f"{head} {_temperature_phrase(rng, degrees)}", _slots(room=room, value=degrees), "terse"


# --- templates: set_brightness --------------------------------------------------------------

_LIGHT_WORDS = ("lights", "light", "lamp")


def _percent_phrase(rng: random.Random, percent: int) -> str:
    choice = rng.random()
    if choice < 0.4:
        return f"{percent}%"
    if choice < 0.75:
        return f"{percent} percent"
    return f"{_number_words(percent)} percent"


def _brightness_set(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 101, 5)
    room, room_word = _maybe_room(rng, 0.7)
    target = _device_phrase(rng, rng.choice(_LIGHT_WORDS), room_word)
    if percent <= 60 and rng.random() < 0.4:
        verb = "dim"
    elif percent >= 40 and rng.random() < 0.3:
        verb = "brighten"
    else:
        verb = rng.choice(("set", "put", "change"))
    return (
        f"{verb} {target} to {_percent_phrase(rng, percent)}",
        _slots(room=room, value=percent),
        "imperative",
    )


def _brightness_level(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 101, 5)
    room, room_word = _maybe_room(rng, 0.6)
    amount = _percent_phrase(rng, percent)
    if room_word and rng.random() < 0.5:
        core = f"set the brightness in the {room_word} to {amount}"
    elif room_word:
        core = f"set {room_word} brightness to {amount}"
    else:
        core = f"set the brightness to {amount}"
    return core, _slots(room=room, value=percent), "imperative"


def _brightness_named(rng: random.Random) -> tuple[str, Slots, str]:
    name, percent = rng.choice((("full", 100), ("max", 100), ("half", 50)))
    room, room_word = _maybe_room(rng, 0.6)
    target = _device_phrase(rng, rng.choice(_LIGHT_WORDS), room_word)
    return f"put {target} at {name} brightness", _slots(room=room, value=percent), "imperative"


def _brightness_terse(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 101, 5)
    room, room_word = _maybe_room(rng, 0.6)
    head = f"{room_word} lights" if room_word else rng.choice(("lights", "brightness"))
    return f"{head} {_percent_phrase(rng, percent)}", _slots(room=room, value=percent), "terse"


def _brightness_other_room(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 65, 5)
    room, room_word, _, other_word = _two_rooms(rng)
    amount = _percent_phrase(rng, percent)
    core, style = rng.choice(
        (
            (
                f"dim the {room_word} lights to {amount}, leave the {other_word} ones as they are",
                "imperative",
            ),
            (
                f"it's too bright in the {room_word}, dim the lights there to {amount}, "
                f"not in the {other_word}",
                "context",
            ),
        )
    )
    return core, _slots(room=room, value=percent), style


# --- templates: set_volume ------------------------------------------------------------------


def _volume_target(rng: random.Random) -> tuple[str | None, str | None, str]:
    """Draw an optional volume device and room: (device, room, phrase for the device)."""
    if rng.random() < 0.25:
        return None, None, ""
    device, device_word = _pick(rng, VOLUME_DEVICES)
    room, room_word = _maybe_room(rng, 0.4)
    return device, room, _device_phrase(rng, device_word, room_word)


def _volume_phrase(rng: random.Random, percent: int) -> str:
    return _percent_phrase(rng, percent) if rng.random() < 0.4 else _number_phrase(rng, percent, "")


def _volume_set(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 101, 5)
    device, room, target = _volume_target(rng)
    amount = _volume_phrase(rng, percent)
    if not target:
        core = f"set the volume to {amount}"
    elif rng.random() < 0.5:
        core = f"set the volume on {target} to {amount}"
    else:
        core = f"turn {target} {'up' if percent >= 50 else 'down'} to {amount}"
    return core, _slots(device=device, room=room, value=percent), "imperative"


def _volume_terse(rng: random.Random) -> tuple[str, Slots, str]:
    percent = rng.randrange(5, 101, 5)
    device, device_word = _pick(rng, VOLUME_DEVICES)
    if rng.random() < 0.5:
        return f"volume {_volume_phrase(rng, percent)}", _slots(value=percent), "terse"
    return (
        f"{device_word} volume {_volume_phrase(rng, percent)}",
        _slots(device=device, value=percent),
        "terse",
    )


def _volume_mute(rng: random.Random) -> tuple[str, Slots, str]:
    device, room, target = _volume_target(rng)
    core = f"mute {target}" if target else "mute the sound"
    return core, _slots(device=device, room=room, value=0), "imperative"


def _volume_complaint(rng: random.Random) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, VOLUME_DEVICES)
    if rng.random() < 0.5:
        percent = rng.randrange(5, 45, 5)
        core = f"the {device_word} is way too loud, bring it down to {_volume_phrase(rng, percent)}"
    else:
        percent = rng.randrange(50, 101, 5)
        core = (
            f"i can barely hear the {device_word}, put the volume at {_volume_phrase(rng, percent)}"
        )
    return core, _slots(device=device, value=percent), "context"


# --- templates: open / close ----------------------------------------------------------------

_OPEN_BLIND_VERBS = ("raise", "pull up", "roll up")
_CLOSE_BLIND_VERBS = ("lower", "pull down", "roll down")

_OPEN_HINTS = (
    ("blinds", "i want some sunlight {where}"),
    ("window", "i need some fresh air {where}"),
)
_CLOSE_HINTS = (
    ("blinds", "the sun is in my eyes {where}"),
    ("window", "there's a cold draft {where}"),
)


def _cover_target(rng: random.Random) -> tuple[str, str, str | None, str | None]:
    device, device_word = _pick(rng, COVER_DEVICES)
    # A garage door belongs to no room in this task.
    room, room_word = (None, None) if device == "garage door" else _maybe_room(rng, 0.7)
    return device, device_word, room, room_word


def _cover_direct(rng: random.Random, opening: bool) -> tuple[str, Slots, str]:
    device, device_word, room, room_word = _cover_target(rng)
    if device == "blinds" and rng.random() < 0.5:
        verb = rng.choice(_OPEN_BLIND_VERBS if opening else _CLOSE_BLIND_VERBS)
    else:
        verb = rng.choice(("open", "open up") if opening else ("close", "shut"))
    core = f"{verb} {_device_phrase(rng, device_word, room_word)}"
    return core, _slots(device=device, room=room), "imperative"


def _cover_terse(rng: random.Random, opening: bool) -> tuple[str, Slots, str]:
    device, device_word, room, room_word = _cover_target(rng)
    verb = "open" if opening else rng.choice(("close", "shut"))
    core = f"{verb} {room_word} {device_word}" if room_word else f"{device_word} {verb}"
    return core, _slots(device=device, room=room), "terse"


def _cover_hint(rng: random.Random, opening: bool) -> tuple[str, Slots, str]:
    device, pattern = rng.choice(_OPEN_HINTS if opening else _CLOSE_HINTS)
    room, room_word = _maybe_room(rng, 0.75)
    return pattern.format(where=_where(room_word)), _slots(device=device, room=room), "statement"


def _cover_other_room(rng: random.Random, opening: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, {k: v for k, v in COVER_DEVICES.items() if k != "garage door"})
    room, room_word, _, other_word = _two_rooms(rng)
    verb = "open" if opening else "close"
    pronoun = _one_or_ones(device_word)
    core, style = rng.choice(
        (
            (
                f"{verb} the {room_word} {device_word}, not the {other_word} {pronoun}",
                "imperative",
            ),
            (f"i'm in the {other_word}, {verb} the {device_word} in the {room_word}", "context"),
        )
    )
    return core, _slots(device=device, room=room), style


# --- templates: lock / unlock ---------------------------------------------------------------


def _lock_direct(rng: random.Random, locking: bool) -> tuple[str, Slots, str]:
    verb = "lock" if locking else "unlock"
    if rng.random() < 0.2:
        # No device named: the answer has none either.
        core = rng.choice((f"{verb} the doors", f"{verb} all the doors", f"{verb} the door"))
        return core, {}, "imperative"
    device, device_word = _pick(rng, LOCK_DEVICES)
    if locking and rng.random() < 0.25:
        return f"make sure the {device_word} is locked", _slots(device=device), "imperative"
    return f"{verb} the {device_word}", _slots(device=device), "imperative"


def _lock_terse(rng: random.Random, locking: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, LOCK_DEVICES)
    verb = "lock" if locking else "unlock"
    core = f"{verb} {device_word}" if rng.random() < 0.5 else f"{device_word} {verb}"
    return core, _slots(device=device), "terse"


def _lock_context(rng: random.Random, locking: bool) -> tuple[str, Slots, str]:
    device, device_word = _pick(rng, LOCK_DEVICES)
    if locking:
        reason = rng.choice(("i'm heading out", "we're going to bed", "i'm leaving for work"))
        if rng.random() < 0.25:
            return f"{reason}, lock up", {}, "context"
        return f"{reason}, lock the {device_word}", _slots(device=device), "context"
    core = rng.choice(
        (
            f"i'm at the {device_word}, let me in",
            f"the plumber is at the {device_word}, unlock it",
            f"let the dog walker in through the {device_word}",
        )
    )
    return core, _slots(device=device), "context"


# --- templates: play_music ------------------------------------------------------------------

# NOTE: the task has no slot for genre or playlist, so "play some jazz" and "play music"
# get the same answer.
_MUSIC_WORDS = (
    "some music",
    "music",
    "my playlist",
    "some jazz",
    "some rock",
    "something relaxing",
    "my workout playlist",
    "some classical music",
)


def _music_where(rng: random.Random) -> tuple[str | None, str]:
    room, room_word = _maybe_room(rng, 0.65)
    if room_word is None:
        return None, ""
    if rng.random() < 0.3:
        return room, f" on the {room_word} speaker"
    return room, f" in the {room_word}"


def _music_play(rng: random.Random) -> tuple[str, Slots, str]:
    room, where = _music_where(rng)
    verb = rng.choice(("play", "put on", "start"))
    return f"{verb} {rng.choice(_MUSIC_WORDS)}{where}", _slots(room=room), "imperative"


def _music_wish(rng: random.Random) -> tuple[str, Slots, str]:
    room, where = _music_where(rng)
    if rng.random() < 0.5:
        return f"i want to hear {rng.choice(_MUSIC_WORDS)}{where}", _slots(room=room), "statement"
    return f"it's too quiet{where or ' in here'}, put some music on", _slots(room=room), "context"


def _music_terse(rng: random.Random) -> tuple[str, Slots, str]:
    room, room_word = _maybe_room(rng, 0.7)
    core = (
        rng.choice((f"music in the {room_word}", f"{room_word} music")) if room_word else "music on"
    )
    return core, _slots(room=room), "terse"


# --- templates: set_timer -------------------------------------------------------------------

_FOODS = ("pasta", "eggs", "rice", "pizza", "cookies", "bread", "tea")


def _timer_set(rng: random.Random) -> tuple[str, Slots, str]:
    minutes = _random_minutes(rng)
    duration = _duration_phrase(rng, minutes)
    if minutes < 60 and rng.random() < 0.3:
        core = f"set a {_number_phrase(rng, minutes, '').replace(' ', '-')}-minute timer"
    else:
        core = rng.choice(
            ("set a timer for {d}", "start a timer for {d}", "start a {d} countdown")
        ).format(d=duration)
    return core, _slots(time=f"{minutes}m"), "imperative"


def _timer_nudge(rng: random.Random) -> tuple[str, Slots, str]:
    # A duration means a timer even without the word "timer", while a clock time means an alarm.
    minutes = _random_minutes(rng)
    duration = _duration_phrase(rng, minutes)
    core = rng.choice(("wake me in {d}", "let me know in {d}", "give me a shout in {d}")).format(
        d=duration
    )
    return core, _slots(time=f"{minutes}m"), "imperative"


def _timer_cooking(rng: random.Random) -> tuple[str, Slots, str]:
    # Oven temperatures and counts are distractors, not slots.
    minutes = _random_minutes(rng)
    duration = _duration_phrase(rng, minutes)
    core, style = rng.choice(
        (
            (
                f"the oven is at {rng.randrange(150, 251, 10)} degrees, set a timer for {duration}",
                "context",
            ),
            (f"set a timer for {duration} for the {rng.choice(_FOODS)}", "imperative"),
            (f"i'm boiling {rng.randint(2, 6)} eggs, timer for {duration}", "context"),
        )
    )
    return core, _slots(time=f"{minutes}m"), style


def _timer_terse(rng: random.Random) -> tuple[str, Slots, str]:
    minutes = _random_minutes(rng)
    duration = _duration_phrase(rng, minutes)
    core = f"timer {duration}" if rng.random() < 0.5 else f"{duration} timer"
    return core, _slots(time=f"{minutes}m"), "terse"


# --- templates: set_alarm -------------------------------------------------------------------


def _alarm_set(rng: random.Random) -> tuple[str, Slots, str]:
    hour, minute = _random_clock(rng)
    clock = _clock_phrase(rng, hour, minute)
    core = rng.choice(
        (
            f"set an alarm for {clock}",
            f"set my alarm for {clock}",
            f"set an alarm for {clock} tomorrow",
            f"wake me up at {clock}",
            f"get me up at {clock}",
        )
    )
    return core, _slots(time=f"{hour:02d}:{minute:02d}"), "imperative"


def _alarm_need(rng: random.Random) -> tuple[str, Slots, str]:
    hour, minute = _random_clock(rng)
    core = f"i need to be up at {_clock_phrase(rng, hour, minute)}"
    return core, _slots(time=f"{hour:02d}:{minute:02d}"), "statement"


def _alarm_appointment(rng: random.Random) -> tuple[str, Slots, str]:
    # The appointment time is a distractor: only the wake-up time is the slot.
    hour, minute = rng.randrange(4, 21), rng.choice((0, 15, 30, 45))
    later = hour * 60 + minute + rng.choice((60, 90, 120))
    event = rng.choice(("my train leaves", "i have a meeting", "the flight is"))
    event_clock = _clock_phrase(rng, *divmod(later, 60))
    core = f"{event} at {event_clock}, wake me up at {_clock_phrase(rng, hour, minute)}"
    return core, _slots(time=f"{hour:02d}:{minute:02d}"), "context"


def _alarm_terse(rng: random.Random) -> tuple[str, Slots, str]:
    hour, minute = _random_clock(rng)
    clock = _clock_phrase(rng, hour, minute)
    core = f"alarm at {clock}" if rng.random() < 0.5 else f"alarm {clock}"
    return core, _slots(time=f"{hour:02d}:{minute:02d}"), "terse"


# --- templates: unknown ---------------------------------------------------------------------

_CHAT_LINES = (
    "hi",
    "hello",
    "hey there",
    "good morning",
    "good evening",
    "how are you",
    "how's it going",
    "thank you",
    "thanks a lot",
    "you're the best",
    "what's your name",
    "are you a robot",
    "i'm bored",
    "never mind",
    "that's all for now",
    "what can you do",
    "tell me something interesting",
    "i had a long day",
)
_CITIES = (
    "paris",
    "london",
    "tokyo",
    "berlin",
    "chicago",
    "madrid",
    "sydney",
    "toronto",
    "lisbon",
    "cairo",
)
_ITEMS = ("milk", "eggs", "bread", "coffee", "apples", "rice", "butter", "dish soap", "batteries")
_PEOPLE = ("mom", "dad", "alex", "sam", "jordan", "the dentist", "my boss", "grandma")
_VAGUE_COMMANDS = (
    "turn it on",
    "turn it off",
    "switch that off",
    "open it",
    "do the usual",
    "fix it",
    "turn on",
    "switch off",
    "adjust it",
    "make it {comparison}",
    "set it to {number}",
    "change the {room}",
    "do something about the {room}",
)
_VAGUE_FRAGMENTS = (
    "you know what to do",
    "the {room} please",
    "what about the {room}",
    "same as yesterday",
)


def _unknown_chat(rng: random.Random) -> tuple[str, Slots, str]:
    first, second = rng.sample(_CHAT_LINES, 2)
    core = first if rng.random() < 0.5 else f"{first}, {second}"
    return core, {}, "plain"


def _unknown_question(rng: random.Random) -> tuple[str, Slots, str]:
    city, other_city = rng.sample(_CITIES, 2)
    day = rng.choice(("today", "tomorrow", "this weekend", "tonight"))
    core = rng.choice(
        (
            f"what's the weather {day} in {city}",
            f"what time is it in {city}",
            f"how far is {city} from {other_city}",
            f"what is {rng.randint(2, 99)} plus {rng.randint(2, 99)}",
            f"convert {rng.randint(2, 99)} miles to kilometers",
            f"tell me a joke about {rng.choice(('cats', 'robots', 'pirates', 'math', 'coffee'))}",
            f"who won the {rng.choice(('football', 'basketball', 'hockey'))} game last night",
            f"what's on my calendar {rng.choice(('today', 'tomorrow', 'next week'))}",
        )
    )
    return core, {}, "question"


def _unknown_errand(rng: random.Random) -> tuple[str, Slots, str]:
    core = rng.choice(
        (
            f"order a {rng.choice(('pizza', 'burger', 'salad', 'curry'))}",
            f"add {rng.choice(_ITEMS)} to my shopping list",
            f"remind me to buy {rng.choice(_ITEMS)}",
            f"call {rng.choice(_PEOPLE)}",
            f"text {rng.choice(_PEOPLE)} that i'm running late",
            f"send an email to {rng.choice(_PEOPLE)}",
            f"book a table for {rng.randint(2, 8)} tonight",
        )
    )
    return core, {}, "imperative"


def _unknown_device(rng: random.Random) -> tuple[str, Slots, str]:
    appliance = rng.choice(UNSUPPORTED_DEVICES)
    _, room_word = _maybe_room(rng, 0.4)
    target = _device_phrase(rng, appliance, room_word)
    core = rng.choice(
        (
            f"turn on {target}",
            f"turn off {target}",
            f"start {target}",
            f"open {target}",
            f"stop {target}",
            f"set the oven to {rng.randrange(150, 251, 10)} degrees",
            f"set the fridge to {rng.randint(2, 6)} degrees",
        )
    )
    return core, {}, "imperative"


def _unknown_vague(rng: random.Random) -> tuple[str, Slots, str]:
    fragment = rng.random() < 0.3
    pattern = rng.choice(_VAGUE_FRAGMENTS if fragment else _VAGUE_COMMANDS)
    core = pattern.format(
        comparison=rng.choice(("brighter", "darker", "warmer", "cooler", "louder", "quieter")),
        number=rng.randint(1, 100),
        room=rng.choice(ROOMS[rng.choice(list(ROOMS))]),
    )
    return core, {}, "plain" if fragment else "imperative"


def _both(template: Callable[..., tuple[str, Slots, str]], name: str) -> tuple[Template, Template]:
    """Bind a two-way template to its positive and negative form (on/off, open/close)."""
    return partial(template, **{name: True}), partial(template, **{name: False})


_SWITCH = [
    _both(t, "on")
    for t in (_switch_direct, _switch_terse, _switch_hint, _switch_other_room, _switch_at_time)
]
_COVER = [
    _both(t, "opening") for t in (_cover_direct, _cover_terse, _cover_hint, _cover_other_room)
]
_LOCK = [_both(t, "locking") for t in (_lock_direct, _lock_terse, _lock_context)]

# A template is drawn uniformly within its intent, so a template listed twice is drawn twice
# as often: direct phrasings are kept the most common.
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "turn_on": (_SWITCH[0][0], _SWITCH[0][0]) + tuple(pair[0] for pair in _SWITCH[1:]),
    "turn_off": (_SWITCH[0][1], _SWITCH[0][1]) + tuple(pair[1] for pair in _SWITCH[1:]),
    "set_temperature": (
        _temperature_set,
        _temperature_set,
        _temperature_make,
        _temperature_reading,
        _temperature_terse,
    ),
    "set_brightness": (
        _brightness_set,
        _brightness_set,
        _brightness_level,
        _brightness_named,
        _brightness_terse,
        _brightness_other_room,
    ),
    "set_volume": (_volume_set, _volume_set, _volume_terse, _volume_mute, _volume_complaint),
    "open": (_COVER[0][0], _COVER[0][0]) + tuple(pair[0] for pair in _COVER[1:]),
    "close": (_COVER[0][1], _COVER[0][1]) + tuple(pair[1] for pair in _COVER[1:]),
    "lock": (_LOCK[0][0], _LOCK[0][0]) + tuple(pair[0] for pair in _LOCK[1:]),
    "unlock": (_LOCK[0][1], _LOCK[0][1]) + tuple(pair[1] for pair in _LOCK[1:]),
    "play_music": (_music_play, _music_play, _music_wish, _music_terse),
    "set_timer": (_timer_set, _timer_set, _timer_nudge, _timer_cooking, _timer_terse),
    "set_alarm": (_alarm_set, _alarm_set, _alarm_need, _alarm_appointment, _alarm_terse),
    "unknown": (
        _unknown_chat,
        _unknown_question,
        _unknown_errand,
        _unknown_device,
        _unknown_device,
        _unknown_vague,
    ),
}

# Relative share of each intent in a split, in percent. "unknown" gets the largest share
# because the model has to learn to reject many unrelated kinds of input.
INTENT_WEIGHTS: dict[str, int] = {
    "turn_on": 11,
    "turn_off": 10,
    "set_temperature": 8,
    "set_brightness": 7,
    "set_volume": 6,
    "open": 6,
    "close": 6,
    "lock": 5,
    "unlock": 5,
    "play_music": 6,
    "set_timer": 7,
    "set_alarm": 7,
    "unknown": 16,
}

# Draws allowed per example before an intent counts as out of unique commands.
_MAX_DRAWS = 2000


# --- splits ---------------------------------------------------------------------------------


def _intent_counts(n: int) -> dict[str, int]:
    """Split n examples over the intents by INTENT_WEIGHTS, rounding by largest remainder."""
    total = sum(INTENT_WEIGHTS.values())
    counts = {intent: n * weight // total for intent, weight in INTENT_WEIGHTS.items()}
    remainders = {intent: n * weight % total for intent, weight in INTENT_WEIGHTS.items()}
    missing = n - sum(counts.values())
    for intent in sorted(remainders, key=remainders.__getitem__, reverse=True)[:missing]:
        counts[intent] += 1
    return counts


def _draw_example(rng: random.Random, intent: str) -> Example:
    template = rng.choice(TEMPLATES[intent])
    core, slots, style = template(rng)
    return Example(command=_decorate(rng, core, style), intent={"intent": intent, **slots})


def _make_split(rng: random.Random, n: int, seen: dict[str, str], context: str) -> list[Example]:
    """Draw n examples whose normalized commands are not in seen, and add them to seen."""
    order = [intent for intent, count in _intent_counts(n).items() for _ in range(count)]
    rng.shuffle(order)

    examples = []
    for intent in order:
        for _ in range(_MAX_DRAWS):
            example = _draw_example(rng, intent)
            key = normalize_command(example.command)
            previous = seen.get(key)
            if previous is None:
                seen[key] = example.answer
                examples.append(example)
                break
            if previous != example.answer:
                # Two templates disagree on one command: a bug in the templates, not in the input.
                raise RuntimeError(
                    f"command {key!r} has two answers: {previous} and {example.answer}"
                )
        else:
            intent_count = sum(1 for example in examples if example.intent["intent"] == intent)
            raise ValueError(
                f"cannot make enough unique commands for {context}: intent {intent!r} ran out "
                f"after {intent_count} in this split ({len(seen)} unique commands in all). "
                "Lower n_train or n_test"
            )
    return examples


def make_splits(
    seed: int = 0, n_train: int = 2000, n_test: int = 300
) -> tuple[list[Example], list[Example]]:
    """Generate train and test examples, deterministic for a seed.

    Each split has the intent mix of INTENT_WEIGHTS. No normalized command (see
    ``normalize_command``) occurs twice, within a split or across both. Raises ValueError for
    a negative size, or when the templates cannot give that many unique commands.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    context = f"seed={seed}, n_train={n_train}, n_test={n_test}"
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    train = _make_split(rng, n_train, seen, context)
    test = _make_split(rng, n_test, seen, context)
    logger.debug("made intent splits (%s): %d train, %d test", context, len(train), len(test))
    return train, test


# --- parsing and scoring --------------------------------------------------------------------

_DECODER = json.JSONDecoder()


def parse_answer(text: str) -> dict | None:
    """Parse the JSON object that starts at the first "{" in a model output.

    Text before that brace and after the object is ignored. Returns None when there is no
    brace, or the object there is cut short or invalid. Later objects are not tried, so a
    truncated answer cannot be mistaken for a nested object inside it.
    """
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value


def _same_json(a: object, b: object) -> bool:
    # Compare as JSON so 21 and 21.0, or 1 and true, stay different.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def score(predictions: list[str], references: list[Example]) -> dict:
    """Score model outputs against reference examples.

    Returns ``{"exact_match": float, "slot_accuracy": {slot: float}, "n": int}``. Exact match
    compares the parsed dict with the reference intent, ignoring key order. Slot accuracy is
    per key, "intent" included, and a slot absent from both counts as correct. An output that
    ``parse_answer`` rejects counts as wrong for the exact match and for every slot.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references. "
            "Pass one prediction per reference"
        )
    if not references:
        raise ValueError("cannot score 0 references. Pass at least one")

    keys = ("intent",) + SLOTS
    exact = 0
    correct = dict.fromkeys(keys, 0)
    for text, reference in zip(predictions, references, strict=True):
        parsed = parse_answer(text)
        if parsed is None:
            continue
        if _same_json(parsed, reference.intent):
            exact += 1
        for key in keys:
            if _same_json(parsed.get(key), reference.intent.get(key)):
                correct[key] += 1

    n = len(references)
    return {
        "exact_match": exact / n,
        "slot_accuracy": {key: count / n for key, count in correct.items()},
        "n": n,
    }
