"""Ground truth: what really changed between two simulator images, and whether a triplet is right.

The vision model answers from `assess` plus noise, so it sees what a real judge sees: the
two images and the instruction, nothing of how they were made. The labels (`label_source`,
`label_candidate`) know more: they also know what the generator dropped, which is how a
phantom removal that looks perfect is still labelled wrong. Tests and benchmarks use these
to measure the precision and recall of every filter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nhr.backends.sim.grammar import Clause, Ref, parse_instruction, resolve
from nhr.backends.sim.render import read_meta
from nhr.backends.sim.world import GLOBAL_ATTRS, SIZES, Obj, Scene, new_size, scene_defects

CANDIDATE_ERRORS: tuple[str, ...] = (
    "unparsed",
    "phantom",
    "source_defect",
    "noise",
    "artefact",
    "noop",
    "wrong_target",
    "partial",
    "color_drift",
    "extra_change",
)
# The defect kinds of the paper's human audit of released triplets, per error kind.
AUDIT_KIND: dict[str, str] = {
    "source_defect": "inherited from the source",
    "phantom": "inherited from the source",
    "partial": "difficult removal / incomplete edit",
    "noop": "difficult removal / incomplete edit",
    "wrong_target": "target-region error",
    "extra_change": "target-region error",
    "artefact": "minor inpainting",
    "noise": "minor inpainting",
    "color_drift": "minor inpainting",
    "unparsed": "other",
}
_OBJECT_FIELDS = (
    "name",
    "color",
    "material",
    "size",
    "slot",
    "fade",
    "scale",
    "tint",
    "mat_strength",
    "blend_name",
    "garbled",
)


@dataclass(frozen=True)
class SourceTruth:
    ok: bool
    defects: list[str]


@dataclass(frozen=True)
class CandidateTruth:
    correct: bool
    error: str | None  # one of CANDIDATE_ERRORS when not correct


@dataclass
class Assessment:
    """What changed from image A to image B with respect to an instruction."""

    parsed: bool
    states: list[str] = field(default_factory=list)  # per clause: done/partial/missing/wrong
    extras: int = 0  # unrequested changes (objects or global attributes)
    changed: bool = False  # anything visible differs beyond the round-trip noise
    new_marks: set[str] = field(default_factory=set)  # blob / speckle appearing in B
    drift: bool = False  # the global colour balance changed
    phantom: bool = False  # some clause acts on an object that A does not contain
    source_defect: bool = False  # A is visibly defective where (or everywhere) the edit acts
    # Score points each flaw kind takes off (kinds as in CANDIDATE_ERRORS, plus "finish", the
    # small imperfections of any edit). Kept apart so a judge can miss one flaw and still see
    # the others (its blind spots, see judges.py).
    adherence_penalties: dict[str, float] = field(default_factory=dict)
    aesthetics_penalties: dict[str, float] = field(default_factory=dict)

    @property
    def adherence(self) -> float:
        return self.scores()[0]

    @property
    def aesthetics(self) -> float:
        return self.scores()[1]

    def scores(self, unseen: frozenset[str] | set[str] = frozenset()) -> tuple[float, float]:
        """(adherence, aesthetics) on the continuous 1-5 scale, as if the flaw kinds in
        `unseen` were absent."""
        return (
            _from_penalties(self.adherence_penalties, unseen),
            _from_penalties(self.aesthetics_penalties, unseen),
        )

    @property
    def flaws(self) -> set[str]:
        """Flaw kinds that take points off either score."""
        return {
            kind
            for penalties in (self.adherence_penalties, self.aesthetics_penalties)
            for kind, value in penalties.items()
            if value > 0
        }

    @property
    def error(self) -> str | None:
        """The first reason, in CANDIDATE_ERRORS order, that the triplet is wrong."""
        if not self.parsed:
            return "unparsed"
        if self.phantom:
            return "phantom"
        if self.source_defect:
            return "source_defect"
        if "speckle" in self.new_marks:
            return "noise"
        if "blob" in self.new_marks:
            return "artefact"
        if not self.changed:
            return "noop"
        if "wrong" in self.states or ("missing" in self.states and self.extras):
            return "wrong_target"
        if "missing" in self.states or "partial" in self.states:
            return "partial"
        if self.drift:
            return "color_drift"
        if self.extras:
            return "extra_change"
        return None


# --- public API ----------------------------------------------------------------------------


def read_scene(png: bytes) -> dict[str, Any] | None:
    """The embedded record of a simulator image: {"kind", "scene", "defects", ...}, or None."""
    return read_meta(png)


def label_source(png: bytes) -> SourceTruth:
    scene = _scene(png)
    defects = scene_defects(scene)
    return SourceTruth(ok=not defects, defects=defects)


def label_candidate(source_png: bytes, edited_png: bytes, instruction: str) -> CandidateTruth:
    error = assess(_scene(source_png), _scene(edited_png), instruction).error
    return CandidateTruth(correct=error is None, error=error)


def true_scores(source_png: bytes, edited_png: bytes, instruction: str) -> tuple[float, float]:
    """(adherence, aesthetics) without noise: what the vision model's answers centre on."""
    result = assess(_scene(source_png), _scene(edited_png), instruction)
    return result.adherence, result.aesthetics


def _scene(png: bytes) -> Scene:
    meta = read_meta(png)
    if not meta or not meta.get("scene"):
        raise ValueError("not a simulator image: it carries no scene metadata")
    return Scene.from_dict(meta["scene"])


# --- assessment ------------------------------------------------------------------------------


def _from_penalties(penalties: dict[str, float], unseen: frozenset[str] | set[str]) -> float:
    total = sum(value for kind, value in penalties.items() if kind not in unseen)
    return round(max(1.0, min(5.0, 5.0 - total)), 3)


def _size(scene: Scene, kind: str, other: Scene | None = None) -> float:
    """How far a flaw of `kind` goes (see Scene.flaw_size); a flaw with no record counts as a
    plain one. `other` is the scene at the other end of the pair: an inverse triplet meets the
    forward edit's flaws from the other side."""
    if kind in scene.flaw_size:
        return scene.flaw_size[kind]
    if other is not None and kind in other.flaw_size:
        return other.flaw_size[kind]
    return 1.0


def aesthetic_penalties(scene: Scene, other: Scene | None = None) -> dict[str, float]:
    """Score points each kind of ugliness in a scene takes off its aesthetics."""
    kinds = {m.get("kind") for m in scene.marks}
    penalties: dict[str, float] = {}

    def add(kind: str, value: float) -> None:
        if value > 0:
            penalties[kind] = round(penalties.get(kind, 0.0) + value, 3)

    if "blob" in kinds:
        add("artefact", 0.4 + 1.6 * _size(scene, "artefact", other))
    if "speckle" in kinds:
        add("noise", 0.3 + 1.2 * _size(scene, "noise", other))
    if scene.drift:
        add("color_drift", 0.1 + 0.5 * _size(scene, "color_drift", other))
    add("source_defect", 1.5 if scene.implausible else 0.0)
    add("source_defect", 1.2 if any(o.garbled for o in scene.objects) else 0.0)
    half_done = scene.blend is not None or any(
        o.fade < 1 or o.tint or o.mat_strength < 1 or o.blend_name or o.ghost_of is not None
        for o in scene.objects
    )
    if half_done:
        add("partial", 0.1 + 0.4 * _size(scene, "partial", other))
    # the region of a botched edit is rarely pretty either (the messier the botch, the less)
    for kind in ("wrong_target", "extra_change", "partial"):
        if kind in scene.flaw_size:
            add(kind, 0.4 * scene.flaw_size[kind])
    add("finish", scene.finish)
    return penalties


def aesthetics(scene: Scene) -> float:
    """5 minus penalties for what makes an image ugly or implausible."""
    return _from_penalties(aesthetic_penalties(scene), frozenset())


def assess(a: Scene, b: Scene, instruction: str) -> Assessment:
    """Compare scene A (before) and B (after) against the instruction."""
    clauses = parse_instruction(instruction)
    facts = _facts(a, b)
    result = Assessment(parsed=bool(clauses))
    result.changed = bool(facts)
    result.aesthetics_penalties = aesthetic_penalties(b, a)
    result.new_marks = {f[1] for f in facts if f[0] == "mark+" and f[1] in ("blob", "speckle")}
    result.drift = ("drift",) in facts
    adherence = result.adherence_penalties
    if not clauses:
        adherence["unparsed"] = 3.5
        return result

    explained: set[tuple[Any, ...]] = set()
    for clause in clauses:
        state, covers, phantom = _check(clause, a, b)
        result.states.append(state)
        explained |= covers
        result.phantom |= phantom
        result.source_defect |= _touches_defect(clause, a)
    result.source_defect |= a.implausible or any(o.garbled for o in a.solid())

    groups: set[tuple[Any, ...]] = set()
    for fact in facts - explained:
        if fact[0] in ("removed", "added", "changed"):
            groups.add(("object", fact[1]))
        elif fact[0] == "mark+" and fact[1] in ("blob", "speckle"):
            continue  # judged by its own penalty
        elif fact != ("drift",):
            groups.add(fact)
    result.extras = len(groups)

    # What was asked and not (fully) done: a missing or wrong clause costs its whole share of
    # the scale, a partial one a share that grows with how much is left undone.
    partial = 0.06 + 0.5 * _size(b, "partial", a)
    deficit = {"done": 0.0, "partial": partial, "missing": 1.0, "wrong": 1.0}
    shortfall = sum(deficit[s] for s in result.states) / len(result.states)
    state_kind = (
        "noop"
        if not result.changed
        else "wrong_target"
        if "wrong" in result.states or ("missing" in result.states and result.extras)
        else "partial"
    )
    if state_kind == "wrong_target":
        # how far off the target the edit landed: a spill into the neighbouring region is a
        # near-miss, a change of the wrong object altogether is not
        adherence[state_kind] = round(min(3.5, 0.4 + 3.1 * _size(b, "wrong_target", a)), 3)
        return result
    if shortfall >= 1.0:
        adherence[state_kind] = 4.0 if not result.changed else 3.5
        return result
    if shortfall > 0:
        adherence[state_kind] = round(4.0 * shortfall, 3)
        if "missing" in result.states:
            adherence[state_kind] = max(adherence[state_kind], 1.5)  # a clause not done at all
    if result.extras:
        size = _size(b, "extra_change", a)
        adherence["extra_change"] = round(min(result.extras, 2) * (0.5 + 1.0 * size), 3)
    if result.drift:
        adherence["color_drift"] = round(0.3 + 1.2 * _size(b, "color_drift", a), 3)
    if "blob" in result.new_marks:
        adherence["artefact"] = round(0.5 * _size(b, "artefact", a), 3)
    if "speckle" in result.new_marks:
        adherence["noise"] = round(0.5 * _size(b, "noise", a), 3)
    if b.finish > a.finish:  # the edit's own imperfections, not the source's roughness
        adherence["finish"] = round(0.5 * (b.finish - a.finish), 3)
    return result


def _mark_key(mark: dict[str, Any]) -> str:
    return json.dumps(mark, sort_keys=True)


def _facts(a: Scene, b: Scene) -> set[tuple[Any, ...]]:
    """Every visible difference from A to B, as hashable facts."""
    facts: set[tuple[Any, ...]] = set()
    for attr in GLOBAL_ATTRS:
        if getattr(a, attr) != getattr(b, attr):
            facts.add(("global", attr))
    if a.blend != b.blend:
        facts.add(("global", "blend"))
    if a.implausible != b.implausible:
        facts.add(("global", "implausible"))
    before = {o.id: o for o in a.objects}
    after = {o.id: o for o in b.objects}
    facts |= {("removed", i) for i in before.keys() - after.keys()}
    facts |= {("added", i) for i in after.keys() - before.keys()}
    for i in before.keys() & after.keys():
        for name in _OBJECT_FIELDS:
            if getattr(before[i], name) != getattr(after[i], name):
                facts.add(("changed", i, name))
    marks_a = {_mark_key(m): m.get("kind") for m in a.marks}
    marks_b = {_mark_key(m): m.get("kind") for m in b.marks}
    facts |= {("mark+", kind) for key, kind in marks_b.items() if key not in marks_a}
    facts |= {("mark-", kind) for key, kind in marks_a.items() if key not in marks_b}
    if (a.drift or None) != (b.drift or None):
        facts.add(("drift",))
    return facts


def _matches(obj: Obj, ref: Ref) -> bool:
    return obj.name == ref.name and all(
        getattr(ref, attr) is None or getattr(ref, attr) == getattr(obj, attr)
        for attr in ("color", "material", "size", "slot")
    )


def _check(clause: Clause, a: Scene, b: Scene) -> tuple[str, set[tuple[Any, ...]], bool]:
    """(state, facts the clause accounts for, whether its target is absent from A)."""
    if clause.changes:
        return _check_global(clause, a, b)
    ref = clause.ref
    assert ref is not None
    before = {o.id: o for o in a.objects}
    if clause.op == "add_object":
        new = [o for o in b.solid() if o.id not in before or before[o.id].fade < 0.8]
        matching = [o for o in new if _matches(o, ref)]
        same_name = [o for o in new if o.name == ref.name]
        chosen = next((o for o in matching if o.fade >= 0.8), None)
        state = "done"
        if chosen is None:
            chosen = matching[0] if matching else same_name[0] if same_name else None
            state = "partial" if matching else "wrong" if same_name else "missing"
        covers = {("added", chosen.id), ("changed", chosen.id, "fade")} if chosen else set()
        return state, covers, False

    target = resolve(ref, a.solid())
    if target is None:
        if clause.op == "remove_object":
            # Nothing to remove in A: a judge sees the target absent from B too and is content.
            state = "done" if resolve(ref, b.solid()) is None else "missing"
            return state, {("mark+", "retexture")}, True
        return "missing", set(), True
    i = target.id
    after = b.get(i)
    ghosts = [o.id for o in b.objects if o.ghost_of == i]
    if clause.op == "remove_object":
        covers = {("removed", i), ("changed", i, "fade")} | {("removed", g) for g in ghosts}
        if after is None:
            return "done", covers, False
        return ("partial" if after.fade < 0.8 else "missing"), covers, False
    if after is None:
        return "missing", set(), False

    def changed(*names: str) -> set[tuple[Any, ...]]:
        return {("changed", i, n) for n in names}

    if clause.op == "change_color":
        covers = changed("color", "tint")
        if after.color == clause.value:
            return ("partial" if after.tint else "done"), covers, False
        return ("wrong" if after.color != target.color else "missing"), covers, False
    if clause.op == "change_material":
        covers = changed("material", "mat_strength")
        if after.material == clause.value:
            return ("partial" if after.mat_strength < 1 else "done"), covers, False
        return ("wrong" if after.material != target.material else "missing"), covers, False
    if clause.op == "resize_object":
        covers = changed("size", "scale")
        expected = new_size(target.size, clause.value)
        if after.size == expected and after.scale == 1.0:
            return "done", covers, False
        grows = SIZES.index(expected) > SIZES.index(target.size)
        if after.size == target.size and after.scale != 1.0 and (after.scale > 1) == grows:
            return "partial", covers, False
        moved = after.size != target.size or after.scale != target.scale
        return ("wrong" if moved else "missing"), covers, False
    if clause.op == "move_object":
        covers = changed("slot") | {("added", g) for g in ghosts}
        if after.slot == clause.value:
            return ("partial" if ghosts else "done"), covers, False
        return ("wrong" if after.slot != target.slot else "missing"), covers, False
    if clause.op == "replace_object":
        covers = changed("name", "color", "material", "blend_name")
        if after.name == clause.value and clause.new_color in (None, after.color):
            return ("partial" if after.blend_name else "done"), covers, False
        return ("wrong" if after.name != target.name else "missing"), covers, False
    return "missing", set(), False


def _check_global(clause: Clause, a: Scene, b: Scene) -> tuple[str, set[tuple[Any, ...]], bool]:
    covers = {("global", attr) for attr, _ in clause.changes} | {("global", "blend")}
    states = []
    for attr, value in clause.changes:
        now = getattr(b, attr)
        states.append("ok" if now == value else "wrong" if now != getattr(a, attr) else "missing")
    if "wrong" in states:
        return "wrong", covers, False
    if all(s == "ok" for s in states):
        blended = b.blend is not None and any(
            attr in b.blend.get("attrs", {}) for attr, _ in clause.changes
        )
        return ("partial" if blended else "done"), covers, False
    return ("partial" if "ok" in states else "missing"), covers, False


def _touches_defect(clause: Clause, a: Scene) -> bool:
    """A duplicated object that the edit acts on makes the pair wrong whatever the editor did."""
    if clause.ref is None or clause.op == "add_object":
        return False
    target = resolve(clause.ref, a.solid())
    if target is None:
        return False
    return target.dup_of is not None or any(o.dup_of == target.id for o in a.objects)
