"""The map tells the truth: links stay inside the repository and the layout names every module."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)|`(\.\./[^`\s]+)`")  # [..](path) or `../path`


def test_relative_links_of_the_docs_name_files_inside_the_repository():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in (a or b for a, b in LINK.findall(page.read_text())):
            if "://" in target:
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.name} links outside the repo: {target}"
            assert resolved.exists(), f"{page.name} links a missing file: {target}"


def test_the_layout_table_names_every_top_level_module_and_folder():
    layout = (ROOT / "docs" / "layout.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+)` \|", layout, flags=re.MULTILINE))
    modules = {path.name for path in ROOT.glob("*.py")}
    folders = {"configs/", "benchmarks/", "docs/", "tests/"}
    assert modules | folders <= rows, sorted((modules | folders) - rows)
    imports = set(re.findall(r"^\| `([a-z0-9_]+)` \|", layout, flags=re.MULTILINE))
    assert {name.removesuffix(".py") for name in modules} - {"test_setup"} <= imports
