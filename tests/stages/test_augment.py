import pytest

from nhr.parsing import ParseError
from nhr.stages.compose import join_instructions
from nhr.stages.invert import clean_inverse


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Add a small blue mailbox beside the door.", "Add a small blue mailbox beside the door."),
        ('Instruction: "Make the bicycle red"', "Make the bicycle red"),
        ("  Change the background to a beach  \n", "Change the background to a beach"),
    ],
)
def test_clean_inverse_accepts_one_instruction(text, expected):
    assert clean_inverse(text, 40) == expected


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty_inverse"),
        ("Instruction:", "empty_inverse"),
        ("Revert the change", "banned_word"),
        ("Undo the removal of the lamp", "banned_word"),
        ("Put the lamp back on the table", "banned_word"),
        ("Restore the red colour", "banned_word"),
        ("Add the lamp.\nThen make it red.", "not_one_instruction"),
        ("word " * 41, "not_one_instruction"),
    ],
)
def test_clean_inverse_rejects_with_a_reason(text, reason):
    with pytest.raises(ParseError) as info:
        clean_inverse(text, 40)
    assert info.value.reason == reason


def test_background_is_not_the_banned_word_back():
    assert clean_inverse("Change the background to a forest", 40)


def test_join_instructions():
    assert join_instructions("Add a red ball on the left.", "Make it night") == (
        "Add a red ball on the left and make it night"
    )
    assert join_instructions("Remove the lamp", "TV off") == "Remove the lamp and TV off"
