"""Tests for the smart-home intent task: splits, answers, parsing and scoring."""

import json
import re

import pytest

from shadow_edge.models.intent_task import (
    INTENTS,
    ROOMS,
    SLOTS,
    SYSTEM_PROMPT,
    Example,
    chat_messages,
    make_splits,
    normalize_command,
    parse_answer,
    score,
)

KEY_ORDER = ("intent",) + SLOTS


@pytest.fixture(scope="module")
def splits():
    return make_splits(seed=0)


def lower_collapsed(text):
    return " ".join(text.lower().split())


def intent_share(examples, name):
    return sum(example.intent["intent"] == name for example in examples) / len(examples)


# --- make_splits ----------------------------------------------------------------------------


def test_splits_same_seed_identical(splits):
    train, test = make_splits(seed=0)
    assert train == splits[0]
    assert test == splits[1]


def test_splits_other_seed_differs(splits):
    train, test = make_splits(seed=1)
    assert [e.command for e in train] != [e.command for e in splits[0]]
    assert [e.command for e in test] != [e.command for e in splits[1]]


def test_splits_default_sizes(splits):
    train, test = splits
    assert len(train) == 2000
    assert len(test) == 300


def test_splits_custom_sizes():
    train, test = make_splits(seed=3, n_train=57, n_test=13)
    assert len(train) == 57
    assert len(test) == 13


def test_splits_zero_test_size():
    train, test = make_splits(seed=0, n_train=10, n_test=0)
    assert len(train) == 10
    assert test == []


def test_splits_no_overlap(splits):
    train, test = splits
    train_keys = {lower_collapsed(e.command) for e in train}
    test_keys = {lower_collapsed(e.command) for e in test}
    assert train_keys.isdisjoint(test_keys)
    # The module's own normalization also drops punctuation, so it must hold there too.
    train_normalized = {normalize_command(e.command) for e in train}
    test_normalized = {normalize_command(e.command) for e in test}
    assert train_normalized.isdisjoint(test_normalized)


def test_splits_no_duplicates(splits):
    for split in splits:
        normalized = [normalize_command(e.command) for e in split]
        assert len(set(normalized)) == len(split)


def test_splits_unknown_share(splits):
    train, test = splits
    assert intent_share(train, "unknown") >= 0.05
    assert intent_share(test, "unknown") >= 0.05


def test_splits_every_intent_in_train(splits):
    train, _ = splits
    assert {e.intent["intent"] for e in train} == set(INTENTS)


def test_splits_every_intent_in_test(splits):
    _, test = splits
    assert {e.intent["intent"] for e in test} == set(INTENTS)


def test_splits_seed_zero_mix(splits):
    train, test = splits
    assert intent_share(train, "unknown") == pytest.approx(0.16)
    assert intent_share(test, "unknown") == pytest.approx(0.16)
    assert intent_share(train, "turn_on") == pytest.approx(0.11)


def test_splits_large_no_conflicts():
    # A command drawn twice with two answers raises RuntimeError inside make_splits.
    for seed in range(3):
        train, test = make_splits(seed=seed, n_train=8000, n_test=1000)
        assert len(train) == 8000
        assert len(test) == 1000


def test_splits_too_many_raises():
    with pytest.raises(ValueError, match=r"n_train=100000.*n_test=5.*ran out"):
        make_splits(seed=0, n_train=100_000, n_test=5)


@pytest.mark.parametrize("kwargs", [{"n_train": -1}, {"n_test": -3}, {"n_train": 2.5}])
def test_splits_invalid_size_raises(kwargs):
    name, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=rf"{name} must be a non-negative int, got {value}"):
        make_splits(seed=0, **kwargs)


# --- content --------------------------------------------------------------------------------


def test_unknown_has_no_slots(splits):
    for example in splits[0] + splits[1]:
        if example.intent["intent"] == "unknown":
            assert example.intent == {"intent": "unknown"}


def test_values_are_ints_in_range(splits):
    ranges = {"set_temperature": (16, 28), "set_brightness": (5, 100), "set_volume": (0, 100)}
    for example in splits[0] + splits[1]:
        name = example.intent["intent"]
        if name in ranges:
            value = example.intent["value"]
            low, high = ranges[name]
            assert type(value) is int, example
            assert low <= value <= high, example
        else:
            assert "value" not in example.intent, example


def test_time_slots_normalized(splits):
    clock = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
    duration = re.compile(r"^[1-9]\d*m$")
    for example in splits[0] + splits[1]:
        name = example.intent["intent"]
        time = example.intent.get("time")
        if name == "set_alarm":
            assert clock.match(time), example
        elif name == "set_timer":
            assert duration.match(time), example
        elif name in ("turn_on", "turn_off"):
            assert time is None or clock.match(time) or duration.match(time), example
        else:
            assert time is None, example


def test_implied_device_absent(splits):
    for example in splits[0] + splits[1]:
        if example.intent["intent"] in ("set_temperature", "set_brightness", "play_music"):
            assert "device" not in example.intent, example


def test_room_named_in_command(splits):
    for example in splits[0] + splits[1]:
        room = example.intent.get("room")
        if room is None:
            continue
        words = [normalize_command(word) for word in ROOMS[room]]
        assert any(word in normalize_command(example.command) for word in words), example


def test_distractor_room_not_target(splits):
    pattern = re.compile(r"not (?:the|in the) ([a-z' ]+?)(?: ones?\b|[.,!?]|$)")
    checked = 0
    for example in splits[0] + splits[1]:
        match = pattern.search(example.command.lower())
        if match is None:
            continue
        checked += 1
        other = normalize_command(match.group(1))
        target_words = [normalize_command(word) for word in ROOMS[example.intent["room"]]]
        assert other not in target_words, example
    assert checked >= 10


def test_too_dark_turns_on_light(splits):
    matches = [e for e in splits[0] + splits[1] if "too dark" in e.command.lower()]
    assert matches
    for example in matches:
        assert example.intent["intent"] == "turn_on"
        assert example.intent["device"] == "light"


def test_oven_unknown_or_timer(splits):
    matches = [e for e in splits[0] + splits[1] if re.search(r"\boven\b", e.command.lower())]
    assert matches
    for example in matches:
        # The oven appears as a distractor in timer commands and as an unsupported device.
        assert example.intent["intent"] in ("unknown", "set_timer"), example


# --- Example.answer -------------------------------------------------------------------------


def test_answers_parse_back(splits):
    for example in splits[0] + splits[1]:
        assert parse_answer(example.answer) == example.intent


def test_answers_key_order(splits):
    for example in splits[0] + splits[1]:
        keys = [key for key, _ in json.loads(example.answer, object_pairs_hook=list)]
        assert keys[0] == "intent"
        assert keys == [key for key in KEY_ORDER if key in keys]


def test_answers_one_short_line(splits):
    for example in splits[0] + splits[1]:
        assert "\n" not in example.answer
        # About 3 characters per token, so 110 characters stay under 40 tokens.
        assert len(example.answer) < 110, example.answer


def test_answer_fixed_order_and_format():
    example = Example(
        command="x",
        intent={"time": "07:30", "room": "kitchen", "intent": "turn_on", "device": "light"},
    )
    expected = '{"intent": "turn_on", "device": "light", "room": "kitchen", "time": "07:30"}'
    assert example.answer == expected


def test_answer_omits_absent_slots():
    assert Example("hi", {"intent": "unknown"}).answer == '{"intent": "unknown"}'


def test_example_invalid_intent_raises():
    with pytest.raises(ValueError, match="invalid intent 'dance'"):
        Example("x", {"intent": "dance"})
    with pytest.raises(ValueError, match="invalid intent None"):
        Example("x", {"device": "light"})


def test_example_invalid_slot_raises():
    with pytest.raises(ValueError, match=r"invalid slot keys \['colour'\]"):
        Example("x", {"intent": "turn_on", "colour": "red"})


def test_example_unknown_with_slots_raises():
    with pytest.raises(ValueError, match="takes no slots"):
        Example("x", {"intent": "unknown", "room": "kitchen"})


def test_example_non_dict_raises():
    with pytest.raises(TypeError, match="got str"):
        Example("x", '{"intent": "unknown"}')


# --- prompt ---------------------------------------------------------------------------------


def test_system_prompt_lists_intents():
    for name in INTENTS:
        assert name in SYSTEM_PROMPT


def test_chat_messages_shape():
    messages = chat_messages("lights on")
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "lights on"},
    ]


# --- parse_answer ---------------------------------------------------------------------------


def test_parse_trailing_text():
    text = '{"intent": "lock", "device": "front door"}\n\nDone! {"intent": "unlock"}'
    assert parse_answer(text) == {"intent": "lock", "device": "front door"}


def test_parse_leading_text_and_whitespace():
    assert parse_answer('  Answer: {"intent": "unknown"}  \n') == {"intent": "unknown"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "turn on the light",
        '{"intent": "turn_on", "device": "li',
        '{"intent": "turn_on", "device": "light"',
        '{"intent": "turn_on", "room": {"name": "kitchen"}',
        '{"intent": turn_on}',
        "{'intent': 'turn_on'}",
        '["intent", "turn_on"]',
        "}{",
        "{" * 100_000,
    ],
)
def test_parse_invalid_returns_none(text):
    assert parse_answer(text) is None


# --- score ----------------------------------------------------------------------------------


def test_score_perfect(splits):
    _, test = splits
    result = score([e.answer for e in test], test)
    assert result["n"] == 300
    assert result["exact_match"] == 1.0
    assert result["slot_accuracy"] == dict.fromkeys(KEY_ORDER, 1.0)


def test_score_mangled_room(splits):
    _, test = splits
    predictions = [e.answer for e in test]
    index = next(i for i, e in enumerate(test) if "room" in e.intent)
    wrong_room = next(room for room in ROOMS if room != test[index].intent["room"])
    predictions[index] = Example("x", {**test[index].intent, "room": wrong_room}).answer

    result = score(predictions, test)
    assert result["exact_match"] == pytest.approx(299 / 300)
    assert result["slot_accuracy"]["room"] == pytest.approx(299 / 300)
    for key in ("intent", "device", "value", "time"):
        assert result["slot_accuracy"][key] == 1.0


def test_score_extra_slot_only_breaks_exact():
    references = [Example("lights on", {"intent": "turn_on", "device": "light"})]
    result = score(['{"intent": "turn_on", "device": "light", "room": "kitchen"}'], references)
    assert result["exact_match"] == 0.0
    assert result["slot_accuracy"]["room"] == 0.0
    assert result["slot_accuracy"]["device"] == 1.0
    assert result["slot_accuracy"]["time"] == 1.0


def test_score_unparsable_counts_wrong():
    references = [
        Example("hi", {"intent": "unknown"}),
        Example("lights on", {"intent": "turn_on", "device": "light"}),
    ]
    result = score(["no json here", '{"intent": "turn_on", "device": "light"}'], references)
    assert result["exact_match"] == 0.5
    assert result["slot_accuracy"] == dict.fromkeys(KEY_ORDER, 0.5)


def test_score_value_type_strict():
    references = [Example("volume 30", {"intent": "set_volume", "value": 30})]
    for prediction in (
        '{"intent": "set_volume", "value": "30"}',
        '{"intent": "set_volume", "value": 30.0}',
    ):
        result = score([prediction], references)
        assert result["exact_match"] == 0.0
        assert result["slot_accuracy"]["value"] == 0.0
        assert result["slot_accuracy"]["intent"] == 1.0


def test_score_ignores_key_order():
    references = [Example("x", {"intent": "turn_on", "device": "fan", "room": "office"})]
    result = score(['{"room": "office", "device": "fan", "intent": "turn_on"}'], references)
    assert result["exact_match"] == 1.0


def test_score_length_mismatch_raises(splits):
    _, test = splits
    with pytest.raises(ValueError, match="got 2 predictions for 300 references"):
        score(["{}", "{}"], test)


def test_score_empty_raises():
    with pytest.raises(ValueError, match="cannot score 0 references"):
        score([], [])
