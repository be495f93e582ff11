"""`nhr export-tuning`: each format checked against its service's documented schema.

- Vertex AI Gemini supervised tuning: JSONL, one example per line with `contents` (required)
  and an optional `systemInstruction`; a content has `role` ("user" or "model") and `parts`;
  a part holds exactly one of `text` or `fileData {mimeType, fileUri}` (Cloud Storage URI).
- OpenAI vision fine-tuning: chat JSONL, one `{"messages": [...]}` per line; roles system,
  user, assistant; images only in user messages, as `image_url` parts whose url is an HTTP
  URL or a base64 `data:` URL; JPEG, PNG or WebP, RGB or RGBA, at most 10 MB each and 64 per
  example; a training file holds at least 10 examples.
- TRL SFT for vision-language models: a dataset with `messages` (content parts
  `{"type": "image"}` / `{"type": "text", "text": ...}`) and `images`, one image per image
  part, in order.
"""

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nhr.cli import main
from nhr.labels import ground_truth, read_labels
from nhr.parsing import parse_scores
from nhr.tuning_export import export_tuning, score_prompt, split

ITEMS = 40


@pytest.fixture(scope="module")
def rated_run(mined, tmp_path_factory):
    run_dir, _ = mined
    copy = tmp_path_factory.mktemp("tuning") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels"))
    assert main(["label", str(copy), "--sample", str(ITEMS), "--simulate-raters", "3"]) == 0
    return copy


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_target(text, truth):
    """The answer is the score JSON the validator's prompt asks for, parsed as the validator
    stage parses it, and equal to the bias-corrected truth."""
    assert set(json.loads(text)) == {"InstructionAdherence", "ImageAesthetic"}
    assert parse_scores(text) == pytest.approx(truth, abs=0.006)


def truths(run):
    return ground_truth(read_labels(run))


def check_split(out, run):
    chosen = json.loads((out / "split.json").read_text())
    train, held = set(chosen["train"]), set(chosen["validation"])
    assert not train & held and len(train | held) == len(truths(run))
    assert abs(len(held) - 0.2 * len(train | held)) <= 3
    held_rows = read_labels(out / "labels-validation.parquet")
    assert {row["item"] for row in held_rows} == held
    return chosen


def test_openai_chat_jsonl_follows_the_vision_fine_tuning_schema(rated_run, tmp_path, capsys):
    out = tmp_path / "openai"
    code = main(["export-tuning", str(rated_run), "--format", "openai", "--output", str(out)])
    assert code == 0
    assert "train and" in capsys.readouterr().out
    truth = truths(rated_run)
    chosen = check_split(out, rated_run)
    train = lines(out / "train.jsonl")
    assert len(train) >= 10  # the service's minimum for a training file
    for name in ("train", "validation"):
        for example, item in zip(lines(out / f"{name}.jsonl"), chosen[name]):
            assert set(example) == {"messages"}
            messages = example["messages"]
            assert all(m["role"] in ("system", "user", "assistant") for m in messages)
            assert messages[-1]["role"] == "assistant"
            images = 0
            for message in messages:
                if isinstance(message["content"], str):
                    continue
                for part in message["content"]:
                    assert part["type"] in ("text", "image_url")
                    if part["type"] == "image_url":
                        assert message["role"] == "user"
                        images += 1
                        url = part["image_url"]["url"]
                        head, _, data = url.partition(",")
                        assert head in (
                            "data:image/png;base64",
                            "data:image/jpeg;base64",
                            "data:image/webp;base64",
                        )
                        raw = base64.b64decode(data, validate=True)
                        assert len(raw) <= 10 * 2**20
                        assert Image.open(io.BytesIO(raw)).mode in ("RGB", "RGBA")
            assert images == 2 <= 64
            user = messages[0]["content"]
            assert [p["type"] for p in user] == ["image_url", "image_url", "text"]
            assert user[2]["text"].startswith("You are an expert evaluator of image edits")
            check_target(messages[-1]["content"], truth[item])


def test_vertex_gemini_jsonl_follows_the_supervised_tuning_schema(rated_run, tmp_path):
    out = tmp_path / "vertex"
    export_tuning(rated_run, out, "vertex-gemini", image_uri_prefix="gs://bucket/tuning")
    truth = truths(rated_run)
    chosen = check_split(out, rated_run)
    for name in ("train", "validation"):
        for example, item in zip(lines(out / f"{name}.jsonl"), chosen[name]):
            assert set(example) <= {"contents", "systemInstruction"} and "contents" in example
            contents = example["contents"]
            assert [c["role"] for c in contents] == ["user", "model"]
            for content in contents:
                assert set(content) == {"role", "parts"}
                for part in content["parts"]:
                    assert len(part) == 1 and next(iter(part)) in ("text", "fileData")
            files = [p["fileData"] for p in contents[0]["parts"] if "fileData" in p]
            assert len(files) == 2
            for file in files:
                assert set(file) == {"mimeType", "fileUri"}
                assert file["mimeType"] in ("image/png", "image/jpeg", "image/webp")
                assert file["fileUri"].startswith("gs://bucket/tuning/images/")
                local = out / file["fileUri"].removeprefix("gs://bucket/tuning/")
                assert local.read_bytes().startswith(b"\x89PNG")
            assert "text" in contents[0]["parts"][-1]
            check_target(contents[1]["parts"][0]["text"], truth[item])


def test_vertex_gemini_needs_a_cloud_storage_location(rated_run, tmp_path, capsys):
    code = main(
        ["export-tuning", str(rated_run), "--format", "vertex-gemini", "--output", str(tmp_path)]
    )
    assert code == 2
    assert "--image-uri-prefix gs://" in capsys.readouterr().err


def test_trl_dataset_has_messages_and_images(rated_run, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "trl"
    export_tuning(rated_run, out, "trl")
    truth = truths(rated_run)
    chosen = check_split(out, rated_run)
    loaded = datasets.load_dataset(
        "parquet",
        data_files={n: str(out / f"{n}.parquet") for n in ("train", "validation")},
    )
    for name in ("train", "validation"):
        assert set(loaded[name].column_names) == {"messages", "images"}
        assert isinstance(loaded[name].features["images"].feature, datasets.Image)
        for example, item in zip(loaded[name], chosen[name]):
            user, answer = example["messages"]
            assert user["role"] == "user" and answer["role"] == "assistant"
            kinds = [part["type"] for part in user["content"]]
            assert kinds == ["image", "image", "text"]
            assert len(example["images"]) == kinds.count("image")
            assert all(image.mode in ("RGB", "RGBA") for image in example["images"])
            check_target(answer["content"][0]["text"], truth[item])


def test_split_keeps_each_source_on_one_side_and_spreads_categories():
    found = []
    for n in range(120):
        found.append(
            {
                "item": f"i{n:03d}",
                "source_key": f"s{n // 3}",  # three edits of each source
                "category": "ABC"[n // 3 % 3],
                "truth": (1.5 + (n % 4), 4.0),
            }
        )
    sides = split(found, 0.25, seed=4)
    train = {e["source_key"] for e in sides["train"]}
    held = {e["source_key"] for e in sides["validation"]}
    assert not train & held
    assert abs(len(sides["validation"]) - 30) <= 3
    for category in "ABC":
        count = sum(e["category"] == category for e in sides["validation"])
        assert 6 <= count <= 14
    assert split(found, 0.25, seed=4) == sides
    assert split(found, 0.25, seed=5) != sides


def test_outside_triplets_export_without_a_run(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for n in range(12):
        for name, color in (("src", (200, 10, 10)), ("edit", (10, 200, 10 + n))):
            Image.new("RGB", (32, 32), color if name == "edit" else (n, 0, 0)).save(
                folder / f"{name}{n}.jpg"
            )
        for rater, bump in (("ann", 0), ("ben", 1)):
            rows.append(
                {
                    "source_image": f"images/src{n}.jpg",
                    "edited_image": f"images/edit{n}.jpg",
                    "instruction": f"Paint the square green {n}",
                    "category": "Change color",
                    "rater": rater,
                    "instruction_score": 3 + bump,
                    "aesthetics_score": 4,
                }
            )
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = export_tuning(tmp_path / "labels.jsonl", tmp_path / "out", "openai")
    assert summary["train"] + summary["validation"] == 12
    first = lines(tmp_path / "out" / "train.jsonl")[0]
    assert first["messages"][0]["content"][0]["image_url"]["url"].startswith(
        "data:image/jpeg;base64,"
    )
    prompts = {score_prompt(f"Paint the square green {n}") for n in range(12)}
    assert first["messages"][0]["content"][2]["text"] in prompts
    check_target(first["messages"][1]["content"], (3.5, 4.0))


def outside_labels(tmp_path, items=12):
    """Outside triplets (no run) rated by two raters: (labels path, truth of each instruction)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    rows = []
    for n in range(items):
        Image.new("RGB", (32, 32), (n, 0, 0)).save(folder / f"src{n}.png")
        Image.new("RGB", (32, 32), (10, 200, n)).save(folder / f"edit{n}.png")
        for rater in ("ann", "ben"):
            rows.append(
                {
                    "source_image": f"images/src{n}.png",
                    "edited_image": f"images/edit{n}.png",
                    "instruction": f"Paint the square green {n}",
                    "rater": rater,
                    "instruction_score": 5.0,
                    "aesthetics_score": 3.0,
                }
            )
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_examples_speak_the_configured_judges_prompt_and_scale(tmp_path, capsys):
    """--judge: the judge's own prompt with the instruction, and the bias-corrected truth
    mapped onto its scale in the answer its parser reads (VIEScore-style on 0-25 here); the
    split records that judge. --prompt replaces only the prompt."""
    from nhr.calibrate import load_judge_config
    from nhr.stages.validate import parse_viescore

    labels = outside_labels(tmp_path)

    def export(out, *options):
        return main(
            ["export-tuning", str(labels), "--format", "openai", "--output", str(out), *options]
        )

    config = str(Path(__file__).resolve().parents[1] / "configs" / "judges" / "editscore-7b.yaml")
    out = tmp_path / "out"
    assert export(out, "--judge", config) == 0
    judge = load_judge_config(config).validate_.judge
    example = lines(out / "train.jsonl")[0]["messages"]
    prompt = example[0]["content"][2]["text"]
    assert prompt.startswith(judge.prompt.split("$instruction")[0])
    assert "Instruction: Paint the square green" in prompt and "$instruction" not in prompt
    answer = example[1]["content"]
    assert json.loads(answer) == {"score": [25.0, 25.0, 12.5, 12.5]}
    assert parse_viescore(answer, 0.0, 25.0) == (25.0, 12.5)
    assert json.loads((out / "split.json").read_text())["judge"]["high"] == 25.0

    template = tmp_path / "mine.txt"
    template.write_text("Rate this edit: $instruction. Answer JSON.")
    out = tmp_path / "out2"
    assert export(out, "--prompt", str(template)) == 0
    example = lines(out / "train.jsonl")[0]["messages"]
    assert example[0]["content"][2]["text"].startswith("Rate this edit: Paint the square green")
    check_target(example[1]["content"], (5.0, 3.0))

    capsys.readouterr()
    assert export(tmp_path / "out3", "--prompt", "no-such-template") == 2
    assert "no-such-template" in capsys.readouterr().err
    assert not (tmp_path / "out3").exists()


def test_calibrate_compares_the_tuned_judge_with_the_base_one_on_the_held_out_split(
    rated_run, tmp_path, capsys
):
    """The loop's last step: the held-out ratings of an export go to `nhr calibrate` with the
    base and the tuned judge; one report row per judge, as in the paper's Table 1, on exactly
    the held-out items, and the tuned judge (the simulator's tuned-Gemini profile) is closer to
    the ratings than the base one (the vanilla Gemini profile)."""
    import yaml

    out = tmp_path / "export"
    assert main(["export-tuning", str(rated_run), "--format", "openai", "--output", str(out)]) == 0
    held = json.loads((out / "split.json").read_text())["validation"]
    judges = []
    for name, profile in (("base", "gemini-2.0-flash"), ("tuned", "tuned-gemini-2.0-flash")):
        path = tmp_path / f"{name}.yaml"
        model = {"backend": "sim", "model": f"sim-{name}", "judge": profile}
        path.write_text(yaml.safe_dump({"models": {"validator": model}}))
        judges += ["--judge", str(path)]
    report_dir = tmp_path / "report"
    args = ["calibrate", str(out / "labels-validation.parquet"), "--run", str(rated_run)]
    capsys.readouterr()
    assert main([*args, *judges, "--output", str(report_dir), "--bootstrap", "50"]) == 0
    report = json.loads((report_dir / "calibration.json").read_text())
    assert report["items"] == len(held)
    base, tuned = report["judges"]["base"], report["judges"]["tuned"]
    assert base["n"] == tuned["n"] == len(held)
    assert tuned["instruction"]["mae"] < base["instruction"]["mae"]
    table = (report_dir / "calibration.md").read_text()
    assert "| judge | n | MAE instr | rho instr | MAE aes | rho aes |" in table
    assert "| base |" in table and "| tuned |" in table


@pytest.mark.parametrize("fmt", ["openai", "trl", "vertex-gemini"])
def test_a_corrupt_outside_image_is_one_line_and_nothing_is_written(tmp_path, capsys, fmt):
    labels = outside_labels(tmp_path, items=4)
    (tmp_path / "images" / "edit2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    argv = ["export-tuning", str(labels), "--format", fmt, "--output", str(tmp_path / "out")]
    if fmt == "vertex-gemini":
        argv += ["--image-uri-prefix", "gs://bucket/images/"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "edit2.png is not a usable image" in err[0]
    assert not (tmp_path / "out").exists()
