"""The map tells the truth: links stay inside the repository and resolve (anchors too), the
layout names every module, and the README stays a short front door whose commands all work."""
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15 * 1024
LINK = re.compile(r"\]\(([^)\s]*)\)|`(\.\./[^`\s]+)`")  # [..](path#anchor) or `../path`
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a `# comment` there is not a heading)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces →
    -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", _prose(page.read_text()),
                              flags=re.MULTILINE):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _code_blocks(page: Path, languages=("bash", "sh", "")) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang in languages]


def _commands(page: Path) -> list[str]:
    """Every command line of the page's shell blocks, continuation lines joined."""
    lines = []
    for block in _code_blocks(page):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def test_the_readme_is_a_front_door_of_at_most_15_kib():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, \
        f"README.md is {size} bytes; move detail to docs/ (at most {README_MAX_BYTES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_name_files_and_anchors_inside_the_repository(page):
    for link in (a or b for a, b in LINK.findall(_prose(page.read_text()))):
        if "://" in link or link.startswith("mailto:"):
            continue
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        assert resolved.is_relative_to(ROOT), f"{page.name} links outside the repo: {link}"
        assert resolved.exists(), f"{page.name} links a missing file: {link}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), \
                f"{page.name} links {link}, but {resolved.name} has no heading with that anchor"


@pytest.mark.torch  # main.py and the notebook modules import torch
def test_every_main_py_command_of_the_readme_parses_its_config_without_running_anything():
    import config
    import main

    commands = [c for c in _commands(README) if c.startswith("python main.py")]
    assert len(commands) >= 5, commands
    for command in commands:
        args = main.parse_args(shlex.split(command, comments=True)[2:])
        cfg = config.load_config(args.config, args.set)  # raises on a bad key, value or file
        assert cfg.run_dir.name == cfg.run_name, command


@pytest.mark.torch  # main.py and the notebook modules import torch
def test_the_readme_manifest_command_means_what_the_readme_says():
    import config
    import main

    command = next(c for c in _commands(README) if "data.dataset=manifest" in c)
    args = main.parse_args(shlex.split(command, comments=True)[2:])
    cfg = config.load_config(args.config, args.set)
    assert (cfg.data.manifest, cfg.data.target, cfg.data.positive) == \
        ("my_faces/metadata.csv", "smiling", "yes")
    assert cfg.data.sensitive == ("skin_type", "race") and cfg.data.dataset_name == "my_faces"
    assert cfg.models.architectures == ("timm:resnet18", "torchvision:mobilenet_v3_small")


def test_every_other_readme_command_names_files_that_exist():
    checked = 0
    for command in _commands(README):
        words = shlex.split(command, comments=True)
        if words[:1] != ["python"] or words[1:2] == ["main.py"]:
            continue
        if words[1] == "-m":
            module = words[2]
            if module != "pytest":
                assert (ROOT / (module.replace(".", "/") + ".py")).exists(), command
        else:
            assert (ROOT / words[1]).is_file(), f"README runs a missing script: {command}"
        paths = [w for w in words[2:] if not w.startswith("-") and ("/" in w or w.endswith(".py"))]
        assert all((ROOT / p).exists() for p in paths), command
        checked += 1
    assert checked >= 2


def test_the_readme_test_command_is_the_one_ci_runs():
    assert "python -m pytest -q" in _commands(README)
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.torch  # main.py and the notebook modules import torch
def test_the_readme_notebook_imports_resolve():
    """`from quantization import FairnessAwareQuantizer` and the like, as the README shows them."""
    imports = 0
    for block in _code_blocks(README, languages=("python",)):
        for module, names in re.findall(r"^from (\w+) import ([\w, ]+)$", block,
                                        flags=re.MULTILINE):
            loaded = __import__(module)
            for name in (n.strip() for n in names.split(",")):
                assert getattr(loaded, name, None) is not None, f"from {module} import {name}"
                imports += 1
        for modules in re.findall(r"^import ([\w, ]+)$", block, flags=re.MULTILINE):
            for module in (m.strip() for m in modules.split(",")):
                __import__(module)
                imports += 1
    assert imports >= 5 and "quantization" in sys.modules


def test_the_layout_table_names_every_top_level_module_and_folder():
    layout = (ROOT / "docs" / "layout.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", layout, flags=re.MULTILINE))
    modules = {path.name for path in ROOT.glob("*.py")}
    folders = {"configs/", "benchmarks/", "docs/", "tests/"}
    assert modules | folders <= rows, sorted((modules | folders) - rows)
    imports = set(re.findall(r"^\| `([a-z0-9_]+)` \|", layout, flags=re.MULTILINE))
    assert {name.removesuffix(".py") for name in modules} - {"test_setup"} <= imports
