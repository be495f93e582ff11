from types import SimpleNamespace

from nhr.config import parse_config
from nhr.stages.select import SelectStage
from nhr.stats import StageStats


def candidate(cid, source="s1", edit="e1"):
    return {
        "candidate_id": cid,
        "source_id": source,
        "edit_id": edit,
        "prompt_id": "p",
        "source_image": "src",
        "edited_image": f"img-{cid}",
        "instruction": "Remove the cat",
        "operation": "remove_object",
        "composite": False,
        "width": 8,
        "height": 8,
    }


def score(cid, adherence, aesthetics, status="ok"):
    return {"candidate_id": cid, "adherence": adherence, "aesthetics": aesthetics, "status": status}


def run_select(edits, validations):
    config = parse_config({"models": "sim"})  # select.best_of: pointwise, the default
    ctx = SimpleNamespace(stats=StageStats(), progress=lambda n: None, config=config)
    return SelectStage().run(ctx, {"edit": edits, "validate": validations}), ctx.stats


def test_best_geometric_mean_wins_and_attempts_are_counted():
    edits = [candidate("a"), candidate("b"), candidate("c"), candidate("d", edit="e2")]
    validations = [score("a", 5.0, 4.7), score("b", 4.9, 4.9), score("c", 3.0, 5.0, "dropped")]
    rows, stats = run_select(edits, validations)
    by_edit = {r["edit_id"]: r for r in rows}
    best = by_edit["e1"]
    assert best["status"] == "ok" and best["candidate_id"] == "b"  # sqrt(4.9*4.9) > sqrt(5*4.7)
    assert best["edited_image"] == "img-b" and best["parents"] == ["b"]
    assert (best["attempts"], best["passes"]) == (3, 2)
    assert best["category"] == "Remove object"
    assert by_edit["e2"]["status"] == "dropped" and by_edit["e2"]["reason"] == "no_candidate_passed"
    assert (by_edit["e2"]["attempts"], by_edit["e2"]["passes"]) == (1, 0)
    assert stats.rows_in == 2 and stats.rows_out == 1 and stats.dropped["not_best"] == 1


def test_ties_are_broken_deterministically():
    edits = [candidate("x"), candidate("y")]
    first, _ = run_select(edits, [score("x", 5.0, 5.0), score("y", 5.0, 5.0)])
    second, _ = run_select(list(reversed(edits)), [score("y", 5.0, 5.0), score("x", 5.0, 5.0)])
    assert first[0]["candidate_id"] == second[0]["candidate_id"]
