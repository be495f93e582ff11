"""Composition never pairs an edit with one that touches the same object.

On main, a designed composite ("remove the basket, the chair and the teapot") was composed
with one of its own parts: "Put a yellow basket on the table and remove the yellow basket,
the white chair and the black teapot".
"""

import pytest

from conftest import small_config_dict
from helpers import dataset_rows, table_rows
from nhr.backends.sim.grammar import parse_instruction, resolve
from nhr.backends.sim.truth import read_scene
from nhr.backends.sim.world import Scene
from nhr.stages.compose import composable, named_things
from nhr.store import ImageStore


def forward(instruction: str, operation: str = "remove_object", composite: bool = False):
    return {"instruction": instruction, "operation": operation, "composite": composite}


def test_the_reported_composite_is_not_made():
    part = forward("Remove the yellow basket on the table")
    whole = forward(
        "Remove the yellow basket, the white chair and the black teapot", composite=True
    )
    assert not composable(part, whole) and not composable(whole, part)
    # even when the designer did not mark the multi-object edit as composite
    unmarked = forward("Remove the yellow basket, the white chair and the black teapot")
    assert not composable(part, unmarked) and not composable(unmarked, part)


def test_independent_edits_are_composed_and_overlapping_ones_are_not():
    assert composable(forward("Remove the cat on the left"), forward("Erase the lamp at the top"))
    assert not composable(
        forward("Make the red cup blue", "change_color"),
        forward("Paint the cup on the left green", "change_color"),
    )
    assert not composable(forward("Add a dog on the right"), forward("Put two dogs at the top"))
    assert not composable(
        forward("Make it night", "time_of_day"), forward("Make it sunset", "time_of_day")
    )
    assert named_things("Can you get rid of the small striped vase at the bottom left?") == {"vase"}


def touched(instruction: str, scene: Scene) -> set:
    """The objects of `scene` (the forward's source) an instruction acts on, by identity;
    objects it adds, by name and place."""
    keys = set()
    for clause in parse_instruction(instruction):
        if clause.ref is None:
            keys.add(("global",) + tuple(attr for attr, _ in clause.changes))
        elif clause.op == "add_object":
            keys.add(("added", clause.ref.name, clause.ref.slot))
        else:
            obj = resolve(clause.ref, scene.objects)
            keys.add(("object", obj.id) if obj else ("named", clause.ref.name))
    return keys


@pytest.fixture(scope="module")
def composite_heavy_run(tmp_path_factory):
    import nhr

    data = small_config_dict(run={"prompts": 24, "shard_size": 8}, design={"batch_size": 8})
    # removals only: every prompt with two or more objects gets a designed "remove all" edit
    data["brief"]["operations"] = {"remove_object": 1}
    data["generate"]["images_per_prompt"] = 1
    data["schedule"]["seeds_per_pair"] = 3
    data["validate"].update(adherence_threshold=4.0, aesthetics_threshold=4.0)
    data["compose"]["max_per_source"] = None
    run_dir = tmp_path_factory.mktemp("composite-heavy")
    nhr.mine(data, run_dir)
    return run_dir


def test_no_released_composite_touches_one_object_twice(composite_heavy_run):
    run_dir = composite_heavy_run
    images = ImageStore(run_dir / "images")
    triplets = {t["triplet_id"]: t for t in table_rows(run_dir, "compose")}
    composites = [row for row in dataset_rows(run_dir) if row["kind"] == "composite"]
    assert len(composites) >= 20
    designed_composites = [
        t for t in triplets.values() if t["kind"] == "forward" and t["composite"]
    ]
    assert designed_composites  # the run has the edits that used to be paired with their parts
    for row in composites:
        first, second = (triplets[parent] for parent in row["parents"])
        assert first["source_id"] == second["source_id"]
        scene = Scene.from_dict(read_scene(images.get(first["source_image"]))["scene"])
        overlap = touched(first["instruction"], scene) & touched(second["instruction"], scene)
        assert not overlap, row["edit_instruction"]
