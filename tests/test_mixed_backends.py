"""One run mixing every backend family, as users do: diffusers for images, transformers for
the gate, and an API server speaking the OpenAI wire format (the real SDK, on 127.0.0.1) for
the designer, pre-filter, validator and inversion. All models are tiny and built locally."""

import sys
from pathlib import Path

import pytest

import nhr
from helpers import dataset_rows, table_rows

sys.path.insert(0, str(Path(__file__).parent / "backends"))
from fake_api_server import FakeApiServer  # noqa: E402
from tiny_diffusers import build_tiny_flux, build_tiny_flux_kontext  # noqa: E402
from tiny_transformers import build_tiny_vlm  # noqa: E402

SECRET = "sk-test-mixed-0123456789-SECRET"


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    from conftest import small_config_dict

    root = tmp_path_factory.mktemp("mixed")
    flux = build_tiny_flux(root / "flux")
    kontext = build_tiny_flux_kontext(root / "kontext")
    vlm = build_tiny_vlm(root / "vlm", fixed_answer="Yes")
    config = small_config_dict(
        run={"prompts": 2, "shard_size": 2},
        generate={"images_per_prompt": 1, "buckets": [[96, 64], [64, 96]]},
        schedule={"seeds_per_pair": 1},
        # tiny random models draw noise: judge it by scores only (the server answers a fixed
        # score for images the simulator did not make)
        prefilter={"low_level": {"enabled": False}, "unwanted_changes": False, "aesthetics": False},
    )
    local = {"device": "cpu", "dtype": "float32"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENAI_API_KEY", SECRET)
        with FakeApiServer(
            score_fallback='{"InstructionAdherence": 4.9, "ImageAesthetic": 4.8}'
        ) as server:

            def api(name):
                return {"backend": "openai", "model": name, "base_url": server.openai_url}

            config["models"] = {
                "designer": api("designer-llm"),
                "generator": {"backend": "diffusers", "model": str(flux), "steps": 2, **local},
                "gate": {
                    "backend": "transformers",
                    "model": str(vlm),
                    "max_new_tokens": 4,
                    **local,
                },
                "editor": {"backend": "diffusers", "model": str(kontext), "steps": 2, **local},
                "prefilter": api("judge-72b"),
                "validator": api("judge-tuned"),
                "inverter": api("inverter-llm"),
            }
            result = nhr.mine(config, root / "run")
    return root / "run", result.stats


def test_every_family_ran_its_role(mixed_run):
    run_dir, stats = mixed_run
    assert stats["complete"]
    sources = [r for r in table_rows(run_dir, "generate") if r["status"] == "ok"]
    assert sources and all('"backend": "diffusers"' in r["model"] for r in sources)
    gate = table_rows(run_dir, "plausibility")
    assert gate and all(r["answer"].strip().startswith("Yes") for r in gate)
    assert all('"backend": "transformers"' in r["model"] for r in gate)
    edits = [r for r in table_rows(run_dir, "edit") if r["status"] == "ok"]
    assert edits and all('"backend": "diffusers"' in r["model"] for r in edits)
    validated = table_rows(run_dir, "validate")
    assert validated and all('"model": "judge-tuned"' in r["model"] for r in validated)
    rows = dataset_rows(run_dir)
    assert {r["kind"] for r in rows} >= {"forward", "inverse"}
    for row in rows:
        assert row["generator_model"].startswith("diffusers:")
        assert row["validator_model"] == "openai:judge-tuned"


def test_api_usage_is_counted_per_stage(mixed_run):
    _, stats = mixed_run
    validate = next(s for s in stats["stages"] if s["stage"] == "validate")
    assert validate["usage"].get("requests", 0) >= validate["model_calls"] > 0


def test_the_api_key_never_reaches_the_run_directory(mixed_run):
    run_dir, _ = mixed_run
    needle = SECRET.encode()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
