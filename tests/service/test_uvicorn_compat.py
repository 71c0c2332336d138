"""The server leans on uvicorn's internals in one module, and says so loudly on a uvicorn without them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.http.server import check_uvicorn

SERVICE = Path(__file__).resolve().parents[2] / "service"


def test_the_installed_uvicorn_has_every_internal_the_server_uses() -> None:
    check_uvicorn()


@pytest.mark.parametrize(
    ("cls", "name"), [(HttpToolsProtocol, "_should_upgrade"), (RequestResponseCycle, "response_started")]
)
def test_a_uvicorn_without_one_of_them_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> None:
    if hasattr(cls, name):
        monkeypatch.delattr(cls, name)
    monkeypatch.setattr("service.http.server.inspect.getsource", lambda obj: "")
    with pytest.raises(RuntimeError, match=rf"not a version this service supports.*{cls.__name__}\.{name}"):
        check_uvicorn()


def test_only_one_module_touches_uvicorn_beyond_its_public_config() -> None:
    """Everything but ``uvicorn.Config`` (a documented API) stays in service/http/server.py."""
    users = {}
    for path in SERVICE.rglob("*.py"):
        text = path.read_text()
        uses = set(re.findall(r"uvicorn\.[A-Za-z_.]+", text)) - {"uvicorn.Config"}
        uses = {u for u in uses if not u.startswith("uvicorn.error") and not u.startswith("uvicorn.access")}
        if uses or re.search(r"^from uvicorn", text, re.M):
            users[str(path.relative_to(SERVICE))] = sorted(uses)
    assert set(users) == {"http/server.py"}, users
