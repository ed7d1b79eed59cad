"""The README stays true: both set-up commands, every setting, every API route."""

from __future__ import annotations

from pathlib import Path

from cacheapi.settings import DEFAULTS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_shows_both_setup_commands():
    assert "make run" in README
    assert "make test" in README


def test_readme_documents_every_setting_and_its_variable():
    for name in DEFAULTS:
        assert f"| `{name}` | `CACHE_{name}` |" in README, name


def test_readme_lists_every_api_route():
    for route in [
        "/api/v1/keys/{key}",
        "/api/v1/batch/get",
        "/api/v1/batch/set",
        "/api/v1/batch/delete",
        "/api/v1/stats",
        "/api/v1/flush",
        "/api/v1/cluster/ring",
        "/api/v1/cluster/nodes",
        "/health",
        "/metrics",
        "/api/schema/",
        "POST /set",
        "GET /get?key=",
        "DELETE /delete?key=",
        "POST /batch_get",
        "POST /batch_set",
        "POST /sync",
    ]:
        assert route in README, route
