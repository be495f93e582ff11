"""`nhr bench`: GEdit-Bench and ImgEdit-Bench on small fixtures built here in both layouts.

The fixtures' source images come from the simulator's generator (they carry their scene, so
the simulated editor can edit them) and each task type gets an instruction the simulated
editor understands where it has such an edit (text and human edits it has not: those items
are "unparsed" edits, as a real editor's failure would be).
"""

from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nhr.backends.base import GenerateRequest
from nhr.backends.sim import SimBackend
from nhr.backends.sim.config import SimBackendConfig
from nhr.bench import benchmark_module, gedit, imgedit
from nhr.bench.compare import compare
from nhr.bench.runner import as_png, run_bench
from nhr.bench.stats import mean_ci
from nhr.cli import main
from nhr.config import parse_config
from nhr.parsing import ParseError

SCENES = (
    "A flat illustration of a kitchen: a blue lamp on the right and a small green plant in "
    "the middle.",
    "A pastel painting of a street: a red bicycle on the left and a yellow umbrella on the right.",
    "An outline drawing of an office: a blue lamp on the left and a small green plant on the "
    "right.",
    "A photo of a beach: a red bicycle in the middle and a yellow umbrella on the left.",
)
# per GEdit task type, one instruction for the lamp scenes and one for the bicycle scenes
GEDIT_INSTRUCTIONS = {
    "background_change": ("Change the background to a beach", "Change the background to a forest"),
    "color_alter": ("Make the blue lamp green", "Make the red bicycle blue"),
    "material_alter": ("Make the lamp wooden", "Make the umbrella striped"),
    "motion_change": ("Move the lamp to the left", "Move the bicycle to the right"),
    "ps_human": ("Make the person smile", "Smooth the skin of the woman's face"),
    "style_change": (
        "Turn the picture into a noir print",
        "Turn the picture into an outline drawing",
    ),
    "subject-add": ("Add a yellow chair at the bottom", "Add a black cat in the middle"),
    "subject-remove": ("Remove the blue lamp", "Remove the yellow umbrella"),
    "subject-replace": ("Replace the lamp with a vase", "Replace the bicycle with a dog"),
    "text_change": ('Change the text on the sign to "OPEN"', 'Write "SALE" on the wall'),
    "tone_transfer": ("Make it night", "Make it winter"),
}
IMGEDIT_INSTRUCTIONS = {
    "add": ("Add a yellow chair at the bottom", "Add a black cat in the middle"),
    "alter": ("Make the blue lamp green", "Make the umbrella striped"),  # old name of adjust
    "extract": ("Extract the lamp", "Extract the bicycle"),
    "replace": ("Replace the lamp with a vase", "Replace the bicycle with a dog"),
    "remove": ("Remove the blue lamp", "Remove the yellow umbrella"),
    "background": ("Change the background to a beach", "Change the background to a forest"),
    "style": ("Turn the picture into a noir print", "Turn the picture into an outline drawing"),
    "compose": ("Remove the lamp and make the plant red", "Remove the umbrella and make it night"),
    "action": ("Move the lamp to the left", "Move the bicycle to the right"),
}

MODELS = """
models:
  designer:  {backend: sim, model: sim-llm}
  generator: {backend: sim, model: sim-t2i}
  gate:      {backend: sim, model: sim-vlm}
  editor:    EDITOR
  prefilter: {backend: sim, model: sim-vlm}
  validator: {backend: sim, model: sim-validator}
  inverter:  {backend: sim, model: sim-llm}
retry: {backoff_s: 0.0}
"""
GOOD_EDITOR = "{backend: sim, model: sim-editor}"
DEGRADED_EDITOR = (
    "{backend: sim, model: sim-editor-degraded, editor_errors: "
    "{noop: 0.3, wrong_target: 0.3, extra_change: 0.15, artefact: 0.15}}"
)


def _config_text(editor: str) -> str:
    return MODELS.replace("EDITOR", editor)


def _config(editor: str = GOOD_EDITOR):
    import yaml

    return parse_config(yaml.safe_load(_config_text(editor)))


def _sources() -> list[bytes]:
    generator = SimBackend(SimBackendConfig(backend="sim", model="sim-t2i"))
    requests = [GenerateRequest(prompt, 96, 96, seed) for seed, prompt in enumerate(SCENES)]
    return generator.generate(requests)


@pytest.fixture(scope="module")
def gedit_data(tmp_path_factory):
    """A GEdit-Bench parquet: every task type on four sources in English, and in Chinese."""
    folder = tmp_path_factory.mktemp("gedit") / "data"
    folder.mkdir()
    sources = _sources()
    rows = []
    for task, instructions in GEDIT_INSTRUCTIONS.items():
        for n, source in enumerate(sources):
            instruction = instructions[n % 2]
            image = {"bytes": source, "path": None}
            for language in ("en", "cn"):
                rows.append(
                    {
                        "task_type": task,
                        "key": f"{task}-{n}-{language}",
                        "instruction": instruction if language == "en" else f"请{instruction}",
                        "instruction_language": language,
                        "input_image": image,
                        "input_image_raw": image,
                        "Intersection_exist": n == 0,
                    }
                )
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    return folder.parent


@pytest.fixture(scope="module")
def imgedit_data(tmp_path_factory):
    """ImgEdit-Bench basic: basic_edit.json and the image folders it names."""
    root = tmp_path_factory.mktemp("imgedit")
    sources = _sources()
    (root / "daily object").mkdir()
    for n, data in enumerate(sources):
        # PNG bytes keep the simulator's scene; a real copy holds JPEGs (as_png converts them)
        (root / "daily object" / f"{n:09d}.png").write_bytes(data)
    entries = {}
    for category, instructions in IMGEDIT_INSTRUCTIONS.items():
        for n in range(len(sources)):
            key = str(len(entries) + 1)
            entries[key] = {
                "id": f"daily object/{n:09d}.png",
                "prompt": instructions[n % 2],
                "edit_type": category,
            }
    (root / "basic_edit.json").write_text(json.dumps(entries, indent=2))
    return root


# --- data layouts --------------------------------------------------------------------------


def test_gedit_reads_its_parquet_by_language(gedit_data):
    english = gedit.load(gedit_data, "en")
    assert len(english) == 44
    assert {item.task for item in english} == set(gedit.TASKS)
    assert all(item.image.startswith(b"\x89PNG") for item in english)
    assert english[0].extra["intersection"] is True
    chinese = gedit.load(gedit_data, "zh")  # "zh" is read as the data's "cn"
    assert len(chinese) == 44 and chinese[0].instruction.startswith("请")
    with pytest.raises(ValueError):
        gedit.load(gedit_data, "fr")


def test_imgedit_reads_its_json_and_images(imgedit_data):
    items = imgedit.load(imgedit_data)
    assert len(items) == 36
    assert {item.task for item in items} == set(imgedit.TASKS)  # "alter" read as adjust
    assert imgedit.load(imgedit_data / "basic_edit.json") == items


def test_jpeg_sources_become_png():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="JPEG")
    png = as_png(buffer.getvalue())
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (8, 8)


# --- prompts and parsing -------------------------------------------------------------------


def test_gedit_prompts_and_answers():
    prompt = gedit.sc_prompt("Remove the cat")
    assert prompt.endswith("Editing instruction: Remove the cat")
    assert gedit.parse("sc", '{"score": [7, 3], "reasoning": "ok"}') == [7, 3]
    assert gedit.parse("pq", 'Sure:\n```json\n{"score": [8, 9]}\n```') == [8, 9]
    assert gedit.parse("pq", "[6, 0]") == [6, 0]
    for bad in ("I cannot judge this.", '{"score": [11, 3]}', '{"score": [5]}'):
        with pytest.raises(ParseError):
            gedit.parse("sc", bad)
    scores = gedit.item_scores({"sc": [7, 3], "pq": [8, 9]})
    assert (
        scores["G_SC"] == 3
        and scores["G_PQ"] == 8
        and scores["G_O"] == pytest.approx(math.sqrt(24))
    )


def test_imgedit_prompts_and_answers():
    for category in imgedit.TASKS:
        text = imgedit.prompt(category, "Remove the cat")
        assert text.endswith("Editing instruction: Remove the cat")
        assert all(f"{name}: <1-5>" in text for name, _, _ in imgedit.CRITERIA[category])
    answer = (
        "Brief reasoning: the cat is gone.\n**Prompt Compliance**: 5\n"
        "Visual Naturalness: 4\nphysical & detail integrity: 3"
    )
    assert imgedit.parse("criteria:remove", answer) == [5, 4, 3]
    with pytest.raises(ParseError):
        imgedit.parse("criteria:remove", "Prompt Compliance: 5\nVisual Naturalness: 4")
    with pytest.raises(ParseError):
        imgedit.parse("criteria:style", answer)  # another category's criteria


def test_mean_ci_over_seeds():
    assert mean_ci([1.0, 2.0, 3.0]) == {"mean": 2.0, "ci": round(4.303 / math.sqrt(3), 4)}
    assert mean_ci([2.5]) == {"mean": 2.5, "ci": None}
    assert mean_ci([]) == {"mean": None, "ci": None}


# --- whole runs ----------------------------------------------------------------------------


def _check_schema(bench, benchmark, seeds):
    module = benchmark_module(benchmark)
    assert set(bench) == {"benchmark", "editor", "judge", "seeds", "metrics"}
    assert bench["benchmark"] == benchmark and bench["seeds"] == seeds
    assert set(bench["metrics"]) == set(module.METRICS)
    for entry in bench["metrics"].values():
        assert set(entry) == {"overall", "by_task"}
        assert set(entry["overall"]) == {"mean", "ci"}
        for cell in entry["by_task"].values():
            assert set(cell) == {"mean", "ci"}


def test_the_sim_judge_answers_both_protocols(gedit_data, imgedit_data, tmp_path):
    """The simulator's judge recognises the benchmarks' prompts and answers in their forms;
    edits its grammar lacks (text, human, extract, pose) are made as no change and judged as
    not done."""
    for name, data in (("gedit", gedit_data), ("imgedit", imgedit_data)):
        out = tmp_path / name
        bench = run_bench(benchmark_module(name), _config(), _config(), data, out, seeds=1)
        _check_schema(bench, name, 1)
        rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
        assert rows and all(row["status"] == "ok" for row in rows)
    rows = [
        json.loads(line) for line in (tmp_path / "gedit" / "scores.jsonl").read_text().splitlines()
    ]
    by_task = {task: [row for row in rows if row["task"] == task] for task in gedit.TASKS}
    unparsed = by_task["text_change"] + by_task["ps_human"]
    done = by_task["background_change"] + by_task["tone_transfer"]

    def mean_sc(rows):
        return sum(row["G_SC"] for row in rows) / len(rows)

    assert mean_sc(unparsed) <= 3 and mean_sc(done) >= mean_sc(unparsed) + 3


def test_unrecognised_judge_prompts_are_recorded_not_fatal(gedit_data, tmp_path, monkeypatch):
    """A judge that does not know the benchmark prompts: each answer is a recorded judge
    failure, and the bench still finishes, writes its files and exits with status 3."""
    from nhr.backends.sim import vision

    monkeypatch.setattr(vision, "detect_task", lambda text: "unknown")
    out = tmp_path / "out"
    bench = run_bench(benchmark_module("gedit"), _config(), _config(), gedit_data, out, seeds=1)
    _check_schema(bench, "gedit", 1)
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 44 and all(row["status"] == "judge_failed" for row in rows)
    assert bench["metrics"]["G_O"]["overall"]["mean"] in (None, 0.0)
    run = json.loads((out / "run.json").read_text())
    assert any(name.startswith("judge_failed:") for name in run["failures"])
    config = tmp_path / "sim.yaml"
    config.write_text(_config_text(GOOD_EDITOR))
    argv = ["bench", "gedit", "--editor", str(config), "--judge", str(config)]
    argv += ["--data", str(gedit_data), "--seeds", "1", "--output", str(tmp_path / "cli")]
    assert main(argv) == 3  # nothing could be judged: said, not hidden


@pytest.mark.parametrize("name", ["gedit", "imgedit"])
def test_bench_tables_with_intervals(name, gedit_data, imgedit_data, tmp_path):
    data = gedit_data if name == "gedit" else imgedit_data
    module = benchmark_module(name)
    out = tmp_path / "out"
    bench = run_bench(module, _config(), _config(), data, out, seeds=3)
    _check_schema(bench, name, 3)
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == bench
    main_metric = module.METRICS[-1] if name == "gedit" else "score"
    entry = bench["metrics"][main_metric]
    assert entry["overall"]["mean"] is not None and entry["overall"]["ci"] is not None
    assert set(entry["by_task"]) == set(module.TASKS)
    assert all(cell["ci"] is not None for cell in entry["by_task"].values())
    tables = (out / "tables.md").read_text()
    assert "sim:sim-validator" in tables and "not comparable" in tables
    heads = module.TASKS if name == "gedit" else module.HEADINGS.values()
    assert all(head in tables for head in heads)
    assert "±" in tables


def test_a_killed_bench_resumes_without_new_calls(imgedit_data, tmp_path):
    module = benchmark_module("imgedit")
    out = tmp_path / "out"
    first = run_bench(module, _config(), _config(), imgedit_data, out, seeds=2)
    calls = {"edit": 0, "ask": 0}
    original_edit, original_ask = SimBackend.edit, SimBackend.ask

    def counting(name, method):
        def wrapped(self, requests):
            calls[name] += len(requests)
            return method(self, requests)

        return wrapped

    SimBackend.edit = counting("edit", original_edit)
    SimBackend.ask = counting("ask", original_ask)
    try:
        (out / "bench.json").unlink()  # as if killed before the end
        second = run_bench(module, _config(), _config(), imgedit_data, out, seeds=2)
        assert calls == {"edit": 0, "ask": 0}
        assert second == first
        third = run_bench(module, _config(), _config(), imgedit_data, out, seeds=3)
        assert calls["edit"] == 36  # only the new seed's edits
    finally:
        SimBackend.edit, SimBackend.ask = original_edit, original_ask
    assert third["seeds"] == 3


@pytest.mark.parametrize("name,metric", [("gedit", "G_O"), ("imgedit", "score")])
def test_compare_sees_a_degraded_editor(name, metric, gedit_data, imgedit_data, tmp_path):
    data = gedit_data if name == "gedit" else imgedit_data
    module = benchmark_module(name)
    good, bad = tmp_path / "good", tmp_path / "bad"
    run_bench(module, _config(), _config(), data, good, seeds=3)
    run_bench(module, _config(DEGRADED_EDITOR), _config(), data, bad, seeds=3)
    result = compare(str(good), str(bad), rounds=400, seed=1)
    overall = result["metrics"][metric]["overall"]
    assert result["same_judge"] and result["paired_units"] > 0
    assert overall["diff"] < 0 and overall["significant"] and overall["ci"][1] < 0
    assert compare(str(good), str(bad), rounds=400, seed=1) == result  # seeded


def test_cli_bench_and_compare(imgedit_data, tmp_path, capsys):
    good_config, bad_config = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good_config.write_text(_config_text(GOOD_EDITOR))
    bad_config.write_text(_config_text(DEGRADED_EDITOR))
    for name, config in (("a", good_config), ("b", bad_config)):
        argv = ["bench", "imgedit", "--editor", str(config), "--judge", str(good_config)]
        argv += ["--data", str(imgedit_data), "--seeds", "2", "--output", str(tmp_path / name)]
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Model | Add | Adjust |" in printed and "Hybrid" in printed
    argv = ["bench", "--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap", "200"]
    assert main(argv + ["--output", str(tmp_path / "cmp")]) == 0
    assert "B − A" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["benchmark"] == "imgedit"
    assert main(["bench", "imgedit", "--editor", str(good_config)]) == 2


def test_a_bench_killed_mid_run_redoes_only_unfinished_calls(imgedit_data, tmp_path):
    module = benchmark_module("imgedit")
    calls = {"edit": 0, "ask": 0}
    original_edit, original_ask = SimBackend.edit, SimBackend.ask

    def edit(self, requests):
        calls["edit"] += len(requests)
        return original_edit(self, requests)

    def ask(self, requests):
        if calls["ask"] >= 40:
            raise KeyboardInterrupt  # killed in the middle of the second chunk's judging
        calls["ask"] += len(requests)
        return original_ask(self, requests)

    SimBackend.edit, SimBackend.ask = edit, ask
    try:
        with pytest.raises(KeyboardInterrupt):
            run_bench(module, _config(), _config(), imgedit_data, tmp_path / "out", seeds=2)
        edited_before = calls["edit"]
        assert 0 < edited_before < 72
        SimBackend.ask = original_ask
        resumed = run_bench(module, _config(), _config(), imgedit_data, tmp_path / "out", seeds=2)
        assert calls["edit"] == 72  # the edits made before the kill were not made again
    finally:
        SimBackend.edit, SimBackend.ask = original_edit, original_ask
    whole = run_bench(module, _config(), _config(), imgedit_data, tmp_path / "whole", seeds=2)
    assert resumed == whole


def test_an_output_holding_another_bench_is_refused_before_any_call(imgedit_data, tmp_path):
    module = benchmark_module("imgedit")
    out = tmp_path / "out"
    run_bench(module, _config(), _config(), imgedit_data, out, seeds=1)
    before = (out / "bench.json").read_bytes()
    with pytest.raises(ValueError, match="holds the results of another bench .*editor_model"):
        run_bench(module, _config(DEGRADED_EDITOR), _config(), imgedit_data, out, seeds=1)
    assert (out / "bench.json").read_bytes() == before  # nothing overwritten


def test_an_output_that_cannot_be_written_is_refused_before_any_call(
    imgedit_data, tmp_path, monkeypatch
):
    from nhr.storage import LocalStorage

    called = []
    monkeypatch.setattr(SimBackend, "edit", lambda self, requests: called.append(1) or [])

    def refuse(self, key, data):
        raise PermissionError(13, "Permission denied", key)

    monkeypatch.setattr(LocalStorage, "write_bytes", refuse)
    with pytest.raises(PermissionError):
        run_bench(benchmark_module("imgedit"), _config(), _config(), imgedit_data, tmp_path / "o")
    assert not called


def test_labels_and_default_folders_tell_models_apart():
    from types import SimpleNamespace

    from nhr.backends.configs import LoraAdapter
    from nhr.bench.runner import default_output, model_label

    base = SimpleNamespace(backend="diffusers", model="/models/flux kontext", loras=[])
    tuned = SimpleNamespace(**{**vars(base), "loras": [LoraAdapter(path="out/lora")]})
    assert default_output("gedit", base) == "bench/gedit-models_flux_kontext"
    assert model_label(base) == "diffusers:/models/flux kontext"
    assert model_label(tuned) == "diffusers:/models/flux kontext + LoRA out/lora"
    judged = _config().models.validator.model_copy(update={"judge": "tuned-gemini-2.0-flash"})
    assert model_label(judged) == "sim:sim-validator (judge tuned-gemini-2.0-flash)"
    assert model_label(_config().models.validator) == "sim:sim-validator"


def test_compare_errors_are_one_line(imgedit_data, gedit_data, tmp_path, capsys):
    module = benchmark_module("imgedit")
    run_bench(module, _config(), _config(), imgedit_data, tmp_path / "img", seeds=1)
    run_bench(
        benchmark_module("gedit"), _config(), _config(), gedit_data, tmp_path / "ged", seeds=1
    )
    for other in (tmp_path / "missing", tmp_path / "ged"):
        assert main(["bench", "--compare", str(tmp_path / "img"), str(other)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nhr: error: "), err


def test_a_malformed_imgedit_json_names_its_file(tmp_path):
    (tmp_path / "basic_edit.json").write_text("{'not': json}")
    with pytest.raises(ValueError, match=r"basic_edit.json is not readable JSON"):
        imgedit.load(str(tmp_path), "en")


def test_one_bench_at_a_time_per_output_folder(imgedit_data, tmp_path, monkeypatch):
    """A second bench into a folder another process is writing would pay for every call
    again: it is refused, before any call."""
    import subprocess
    import sys
    import time

    from nhr.lock import RunLockedError

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from nhr.lock import RunLock; "
            f"lock = RunLock({str(out)!r}); lock.__enter__(); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        called = []
        monkeypatch.setattr(SimBackend, "edit", lambda self, requests: called.append(1) or [])
        with pytest.raises(RunLockedError, match="is in use by process"):
            run_bench(benchmark_module("imgedit"), _config(), _config(), imgedit_data, out)
        assert not called
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    run_bench(benchmark_module("imgedit"), _config(), _config(), imgedit_data, out, seeds=1)
