import copy
import os
from pathlib import Path

import pytest
import yaml

# An accidental hub call must fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def small_config_dict(**sections) -> dict:
    """The quickstart config at a size that mines in a few seconds, with section overrides."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["run"].update(prompts=16, shard_size=4)
    data["design"]["batch_size"] = 8
    data["generate"]["images_per_prompt"] = 2
    data["schedule"]["seeds_per_pair"] = 2
    for name, values in sections.items():
        target = data.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = copy.deepcopy(value)
    return data


@pytest.fixture(scope="session")
def small_config():
    """A function building the small config, usable by fixtures of any scope."""
    return small_config_dict


@pytest.fixture(scope="session")
def mined(tmp_path_factory):
    """One small finished run shared by the tests that only read it."""
    import nhr

    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, nhr.mine(small_config_dict(), run_dir)
