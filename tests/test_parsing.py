import pytest

from nhr.parsing import ParseError, extract_json, parse_scores, parse_yes_no


@pytest.mark.parametrize(
    "text",
    [
        '[{"prompt": "a", "edits": []}]',
        'Here you go:\n```json\n[{"prompt": "a", "edits": []}]\n```\nEnjoy!',
        'Sure! [{"prompt": "a", "edits": [],},] trailing words',
        "```\n[{\u201cprompt\u201d: \u201ca\u201d, \u201cedits\u201d: []}]\n```",
    ],
)
def test_extract_json_tolerates_fences_prose_and_trailing_commas(text):
    assert extract_json(text, expect=list) == [{"prompt": "a", "edits": []}]


@pytest.mark.parametrize("text", ["", "   ", "I cannot help with that.", '[{"prompt": "a", "edi'])
def test_extract_json_rejects_text_without_json(text):
    with pytest.raises(ParseError):
        extract_json(text, expect=list)


def test_extract_json_skips_values_of_the_wrong_type():
    assert extract_json('{"note": 1} then [1, 2]', expect=list) == [1, 2]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", True),
        ("yes.", True),
        ("**No**", False),
        ("no", False),
        ("Answer: Yes", True),
        ("The answer is no.", False),
        ("YES, it does.", True),
        ("False", False),
    ],
)
def test_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize("text", ["", "Maybe", "Both yes and no", "I am not sure about this image"])
def test_yes_no_unparseable(text):
    with pytest.raises(ParseError):
        parse_yes_no(text)


def test_scores_from_json_and_clamping():
    assert parse_scores('{"InstructionAdherence": 4.6, "ImageAesthetic": 4.9}') == (4.6, 4.9)
    assert parse_scores('```json\n{"InstructionAdherence": 7, "ImageAesthetic": 0}\n```') == (
        5.0,
        1.0,
    )
    assert parse_scores('{"instruction_adherence": "4.5", "aesthetics": 3}') == (4.5, 3.0)


def test_scores_from_broken_json_with_both_numbers():
    assert parse_scores("InstructionAdherence: 4.2, ImageAesthetic: 3.8 (truncated") == (4.2, 3.8)


@pytest.mark.parametrize(
    "text",
    [
        '{"InstructionAdherence": 4.6}',
        "Looks good to me",
        '{"InstructionAdherence": "NaN", "ImageAesthetic": 4}',
        '{"InstructionAdherence": "high", "ImageAesthetic": 4}',
    ],
)
def test_scores_unparseable(text):
    with pytest.raises(ParseError):
        parse_scores(text)
