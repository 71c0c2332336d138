"""The README and docs/ document what the code actually offers, and stay readable."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from service.settings import ENV_PREFIX, Settings
from tests.tolerance import SERVED_ATOL, SERVED_DEVICE
from training.config import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The people-facing docs, README first: examples run in this order against one server.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "BENCHMARKS.md"]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _documented_default(field: object) -> str:
    """How the README's Default column writes a setting's default."""
    default = getattr(field, "default", None)
    if getattr(field, "is_required", lambda: False)():
        return "required"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def test_every_service_setting_is_in_the_readme_table_with_its_default():
    rows = [line for line in README.splitlines() if line.startswith("| `--") and "`HC_" in line]
    assert len(rows) == len(Settings.model_fields), "the README table has a row for each setting, and no others"
    for name, field in Settings.model_fields.items():
        flag, env = f"`--{name.replace('_', '-')}`", f"`{ENV_PREFIX}{name.upper()}`"
        row = next((r for r in rows if r.startswith(f"| {flag}") and env in r), None)
        assert row is not None, f"README table lacks {flag} {env}"
        default = row.split(" | ")[2].strip()
        assert default == _documented_default(field), f"README: {flag} default {default}, settings say {field}"


def test_readme_fits_a_ten_minute_read_and_no_doc_cites_issues_or_commits():
    import re

    assert len(README.splitlines()) <= 300, "README.md is for a newcomer: depth goes to docs/"
    for path in [*DOCS, ROOT / "tests" / "README.md"]:
        text = _text(path)
        issue = re.search(r"\bissue \d+|\b[Hh]\d{1,2}\b", text)
        assert issue is None, f"{path.name} cites an issue: {issue and issue.group()}"
        commit = re.search(r"`[0-9a-f]{7,40}`", text)
        assert commit is None, f"{path.name} cites a commit: {commit and commit.group()}"


def test_decision_records_say_context_decision_consequences():
    import re

    records = sorted((ROOT / "docs" / "decisions").glob("*.md"))
    assert records
    for number, path in enumerate(records, start=1):
        name_ok = re.fullmatch(rf"{number:04d}-[a-z0-9-]+\.md", path.name)
        assert name_ok, f"{path.name}: NNNN-title.md, numbered in order"
        headings = re.findall(r"^## (.+)$", _text(path), flags=re.MULTILINE)
        assert headings == ["Context", "Decision", "Consequences"], f"{path.name}: {headings}"


def test_readme_training_flags_exist():
    flags = {option for action in build_parser()._actions for option in action.option_strings}
    for flag in (
        "--data",
        "--artifacts-dir",
        "--model",
        "--epochs",
        "--seed",
        "--device",
        "--stopwords",
        "--nltk-data",
        "--cache-dir",
        "--weights-dtype",
    ):
        assert flag in flags
        assert flag in README


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    import re

    headings = re.findall(r"^#+ (.+)$", _text(path), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_doc_links_and_their_anchors_resolve():
    import re

    checked = 0
    for path in [*DOCS, ROOT / "tests" / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", _text(path)):
            if "://" in target:
                continue
            linked = (path.parent / target).resolve() if target else path
            assert linked.exists(), f"{path.relative_to(ROOT)} links to missing {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{path.relative_to(ROOT)}: no heading #{anchor} in {target}"
            checked += 1
    assert checked > 30


# --- README commands and their outputs -----------------------------------------------------


def _blocks(language: str, text: str = README) -> list[str]:
    import re

    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: comments dropped, backslash continuations joined."""
    import re

    out, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        if (current + line).strip():
            out.append((current + line).strip())
        current = ""
    return out


def _make_targets_and_variables() -> tuple[set[str], set[str]]:
    import re

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", makefile, flags=re.MULTILINE))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", makefile, flags=re.MULTILINE))
    return targets, variables


def test_readme_shell_commands_use_real_targets_variables_flags_and_files():
    import re
    import shlex

    from service.settings import build_parser as service_parser

    targets, variables = _make_targets_and_variables()
    service_flags = {o for a in service_parser()._actions for o in a.option_strings}
    training_flags = {o for a in build_parser()._actions for o in a.option_strings}
    commands = [c for path in DOCS for block in _blocks("bash", _text(path)) for c in _commands(block)]
    assert len(commands) > 15
    checked = 0
    for command in commands:
        words = shlex.split(command)
        assignments = [w.split("=")[0] for w in words if re.fullmatch(r"[A-Z_]+=\S*", w)]
        if "make" in words:
            i = words.index("make")
            assert words[i + 1] in targets, f"README: `{command}`: no make target {words[i + 1]}"
            for arg in words[i + 2 :]:
                name = arg.split("=")[0]
                assert "=" in arg and name in variables, f"README: `{command}`: {arg} is not a Makefile variable"
            checked += 1
        for module, flags in (("service", service_flags), ("training", training_flags)):
            at = [i for i in range(1, len(words)) if words[i - 1] == "-m" and words[i] == module]
            if at:
                used = {w.split("=")[0] for w in words[at[0] + 1 :] if w.startswith("--")}
                assert used <= flags, f"README: `{command}`: unknown flags {used - flags}"
                hc = [a for a in assignments if a.startswith("HC_")]
                assert all(a[3:].lower() in Settings.model_fields for a in hc), command
                checked += 1
        if words[:2] == ["docker", "build"] and "-f" in words:
            assert (ROOT / words[words.index("-f") + 1]).exists(), command
    assert checked > 10


def _segments(text: str) -> list[tuple[str, object]]:
    """Output split into JSON documents and other lines (header, status, metric lines)."""
    import json

    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if text[i] in "{[":
            value, i = decoder.raw_decode(text, i)
            out.append(("json", value))
            continue
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        out.append(("line", text[i:end].rstrip()))
        i = end
    return out


def _same_json(documented: object, actual: object, where: str = "", abridged: bool = False) -> None:
    """Equal, floats to 1e-6 (1e-4 on CUDA, see tests/tolerance.py); a dict with a "..." key (and
    everything in it) may leave keys out."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), where
        keys = [k for k in documented if k != "..."]
        abridged = abridged or "..." in documented
        if abridged:
            assert set(keys) <= set(actual), f"{where}: {set(keys) - set(actual)} missing"
        else:
            assert keys == list(actual), f"{where}: keys {keys} != {list(actual)}"
        for key in keys:
            _same_json(documented[key], actual[key], f"{where}.{key}", abridged)
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(documented) == len(actual), where
        for n, (d, a) in enumerate(zip(documented, actual, strict=True)):
            _same_json(d, a, f"{where}[{n}]", abridged)
    elif isinstance(documented, float):
        close = isinstance(actual, float) and abs(documented - actual) <= SERVED_ATOL
        assert close, f"{where}: {documented} != {actual}"
    elif where.endswith(".device") and documented == "cpu":  # the README's outputs come from a CPU server
        assert actual == SERVED_DEVICE, f"{where}: {actual!r} is not where this machine serves"
    else:
        assert documented == actual, f"{where}: {documented!r} != {actual!r}"


def _same_output(documented: str, actual: str, command: str) -> None:
    import re

    doc, got = _segments(documented), _segments(actual)
    doc_lines = [v for k, v in doc if k == "line"]
    got_lines = [v for k, v in got if k == "line"]
    metric = re.compile(r"^(hc_\S+) [-+0-9.e]+$")
    header = re.compile(r"^[a-z-]+: ", flags=re.IGNORECASE)
    if doc_lines and all(metric.match(str(line)) for line in doc_lines):  # counts depend on the traffic so far
        series = {metric.sub(r"\1", str(line)) for line in got_lines}
        # The README's outputs come from a CPU server; on a GPU machine hc_model_info says cuda.
        served = f'device="{SERVED_DEVICE}"'
        shown = {metric.sub(r"\1", str(line)).replace('device="cpu"', served) for line in doc_lines}
        assert shown <= series, command
    else:
        documented_headers = {str(line).lower() for line in doc_lines if header.match(str(line))}
        got_headers = {str(line).lower() for line in got_lines if header.match(str(line))}
        assert documented_headers <= got_headers, f"`{command}`: headers {documented_headers - got_headers}"
        strip = [line for line in doc_lines if not header.match(str(line))]
        assert strip == [line for line in got_lines if not header.match(str(line))], command
    doc_json, got_json = [v for k, v in doc if k == "json"], [v for k, v in got if k == "json"]
    assert len(doc_json) == len(got_json), f"`{command}`: {len(got_json)} JSON bodies, README shows {len(doc_json)}"
    for d, a in zip(doc_json, got_json, strict=True):
        _same_json(d, a, command)


def _console_examples(text: str = README) -> list[tuple[str, str]]:
    examples = []
    for block in _blocks("console", text):
        command, output = "", []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command:
                    examples.append((command, "\n".join(output)))
                command, output = line[2:], []
            elif command and command.endswith("\\") and not output:
                command = command[:-1] + " " + line.strip()
            else:
                output.append(line)
        if command:
            examples.append((command, "\n".join(output)))
    return examples


@contextlib.contextmanager
def _busy_queue(port: int, clients: int = 3) -> Iterator[None]:
    """Keeps the server's queue non-empty: clients posting 256-headline requests in a loop."""
    import http.client
    import threading
    import time

    body = json.dumps({"texts": [f"Stocks rally as oil prices fall for day {i}" for i in range(256)]})
    done = threading.Event()

    def post_until_done() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not done.is_set():
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        conn.close()

    threads = [threading.Thread(target=post_until_done, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)


def test_readme_api_outputs_come_from_the_committed_model():
    """Runs every `$ curl` example of the README and docs/ (the other console examples have their
    own tests), in order, README first, against `make run`'s server (the committed default model,
    HC_ADMIN_TOKEN set) and compares the output with the documented one."""
    import os
    import shutil
    import subprocess

    import pytest

    from tests.service.live_server import start_server

    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is needed to check the README's examples")
        pytest.skip("curl is not installed")
    # An example after a `$ # behind ... queued ...` comment runs while the queue is kept busy.
    examples = []
    for path in DOCS:
        busy = False
        for command, documented in _console_examples(_text(path)):
            if command.startswith("curl "):
                examples.append((command, documented, busy))
            busy = command.startswith("#") and "queued" in command
    assert len(examples) >= 13
    token = "readme-token"
    server = start_server("artifacts", "--torch-threads", "1", env={"HC_ADMIN_TOKEN": token})
    try:
        for command, documented, needs_load in examples:
            run = command.replace("localhost:8000", f"127.0.0.1:{server.port}")
            with _busy_queue(server.port) if needs_load else contextlib.nullcontext():
                result = subprocess.run(
                    ["bash", "-c", run],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env={**os.environ, "HC_ADMIN_TOKEN": token},
                )
            assert result.returncode == 0, f"`{command}`: {result.stderr}"
            _same_output(documented, result.stdout, command)
    finally:
        server.stop()


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
