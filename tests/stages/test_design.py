from nhr.stages.design import clean_item, item_style, parse_design_answer


def test_items_accept_strings_and_objects_and_drop_duplicates():
    item = {
        "prompt": "  A red   ball ",
        "edits": [
            "Remove the ball",
            {"instruction": "remove the ball"},
            {"instruction": "Remove all", "composite": True},
            7,
        ],
    }
    prompt, edits = clean_item(item)
    assert prompt == "A red ball"
    assert edits == [
        {"instruction": "Remove the ball", "composite": False},
        {"instruction": "Remove all", "composite": True},
    ]


def test_unusable_items_give_a_reason():
    assert clean_item("text") == "item_not_object"
    assert clean_item({"edits": ["x"]}) == "missing_prompt"
    assert clean_item({"prompt": "p"}) == "missing_edits"
    assert clean_item({"prompt": "p", "edits": [None, ""]}) == "no_usable_edits"


def test_answer_must_hold_a_non_empty_array():
    assert parse_design_answer('Here:\n```json\n[{"prompt": "p", "edits": ["e"]}]\n```') == [
        {"prompt": "p", "edits": ["e"]}
    ]
    for bad in ("[]", "no json here", '{"prompt": "p"}'):
        try:
            parse_design_answer(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_style_is_the_one_the_item_names():
    styles = ["photo", "noir print"]
    assert item_style({"prompt": "A photo of a noir print", "style": "noir print"}, styles) == (
        "noir print"
    )
    # the brief's spelling wins over the designer's case and spacing
    assert item_style({"style": "  Noir   Print "}, styles) == "noir print"
    # an off-brief style is recorded as said; only a missing one is "unspecified"
    assert item_style({"style": "watercolour"}, styles) == "watercolour"
    for missing in ({}, {"style": None}, {"style": " "}, {"style": 3}):
        assert item_style({"prompt": "A photo of a street", **missing}, styles) == "unspecified"
