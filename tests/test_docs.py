"""The README documents what the code actually offers."""

from __future__ import annotations

from pathlib import Path

from service.settings import ENV_PREFIX, Settings
from training.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_service_setting_is_in_the_readme_table():
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    for name in Settings.model_fields:
        flag, env = f"`--{name.replace('_', '-')}`", f"`{ENV_PREFIX}{name.upper()}`"
        assert any(row.startswith(f"| {flag}") and env in row for row in rows), f"README table lacks {flag} {env}"


def test_readme_training_flags_exist():
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for flag in ("--data", "--artifacts-dir", "--model", "--epochs", "--seed", "--device", "--stopwords",
                 "--nltk-data", "--cache-dir", "--weights-dtype"):
        assert flag in flags
        assert flag in README


def test_readme_links_resolve():
    import re

    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_tests_readme_names_only_real_tests():
    """tests/README.md maps README claims to tests: every test it names must exist."""
    import re

    table = (ROOT / "tests" / "README.md").read_text(encoding="utf-8")
    every_test = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    current: Path | None = None
    checked = 0
    for token in re.findall(r"`([^`]+)`", table):
        match = re.fullmatch(r"(?P<file>(?:[\w]+/)*test_\w+\.py)?(?P<sep>::)?(?P<test>test_\w+)?(?:\[.*\])?", token)
        if not match or not (match["file"] or match["test"]):
            continue
        if match["file"]:
            current = ROOT / "tests" / match["file"]
            assert current.exists(), f"tests/README.md names missing file {match['file']}"
        if match["test"]:
            # file::test and ::test (same file as the token before) are looked up in that file
            scope = current.read_text(encoding="utf-8") if match["sep"] and current else every_test
            assert f"def {match['test']}(" in scope, f"tests/README.md: no test {token}"
            checked += 1
    assert checked > 50
