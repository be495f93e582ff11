"""The `style` column is the style each prompt was designed in, not a guess from its text.

On main the style was found by searching the prompt for a brief style's name, so 460 of 985
released quickstart rows were "unspecified" and the dataset card's style table was wrong.
"""

from collections import Counter

from conftest import small_config_dict
from helpers import dataset_rows, table_rows
from nhr.config import parse_config


def card_table(card: str, title: str) -> dict[str, int]:
    lines = card.splitlines()
    start = lines.index(f"| {title} | triplets |") + 2
    table = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, count = (cell.strip() for cell in line.strip("|").split("|"))
        table[name] = int(count.replace(",", ""))
    return table


def test_every_released_row_has_a_style_of_the_brief(mined):
    run_dir, _ = mined
    styles = parse_config(small_config_dict()).brief.styles
    rows = dataset_rows(run_dir)
    assert rows
    counts = Counter(row["style"] for row in rows)
    assert set(counts) <= set(styles), counts
    assert len(counts) >= 3  # the designer varies the style across the brief's list
    card = (run_dir / "dataset" / "README.md").read_text()
    assert card_table(card, "style") == dict(sorted(counts.items()))


def test_the_design_table_keeps_the_designers_style(mined):
    run_dir, _ = mined
    prompts = table_rows(run_dir, "design")
    assert prompts and all(row["style"] != "unspecified" for row in prompts)
