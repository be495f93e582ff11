"""The docs a user reads agree with the repository: the quickstart's time in the README and
in the config header, the method's numbered sections, the install command's extras."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_and_quickstart_header_agree_on_the_time():
    readme = (ROOT / "README.md").read_text()
    header = (ROOT / "configs" / "quickstart.yaml").read_text().split("\n\n")[0]
    said = re.search(r"quickstart \(.*?about (\d+) seconds on 2 CPU cores", readme, re.S)
    assert said, "the README's quickstart line gives no time"
    assert f"about {said.group(1)} seconds on 2 cores" in header


def test_the_readme_install_brings_datasets():
    readme = (ROOT / "README.md").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert 'pip install -e ".[hf]"' in readme.split("## ")[0]
    assert any(dep.startswith("datasets") for dep in extras["hf"])


def test_method_has_the_eight_numbered_sections():
    method = (ROOT / "docs" / "method.md").read_text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", method, re.M)]
    assert numbers == list(range(1, 9))
    assert "arXiv 2507.14119" in method


def test_no_citation_of_files_a_user_does_not_have():
    """Code and docs cite the paper and the project's own docs/, never a planning file that
    is not in the repository."""
    foreign = ["NHR-" + "METHOD", "DESIGN" + ".md", "SIMULATOR" + ".md", "SCALE" + ".md"]
    places = [ROOT / "README.md"] + [
        path
        for folder in ("src", "tests", "benchmarks", "docs", "configs")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".md", ".yaml", ".txt", ".html") and path.is_file()
    ]
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in places
        for name in foreign
        if name in path.read_text(errors="replace")
    ]
    assert found == []
