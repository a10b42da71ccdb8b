"""Fixtures shared by every tier of the template's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

Baker = Callable[..., Path]


def _bake(cookies: Any, context: Mapping[str, Any]) -> Path:
    result = cookies.bake(extra_context=dict(context))
    assert result.exception is None, f"bake failed for {dict(context)}: {result.exception!r}"
    assert result.exit_code == 0
    return Path(result.project_path)


@pytest.fixture
def bake(cookies: Any) -> Baker:
    """bake(**answers) -> path of a freshly generated project."""
    return lambda **context: _bake(cookies, context)


@pytest.fixture(scope="session")
def bake_once(cookies_session: Any) -> Baker:
    """Like `bake`, but each distinct set of answers is generated once per session."""
    cache: dict[tuple[tuple[str, Any], ...], Path] = {}

    def bake(**context: Any) -> Path:
        key = tuple(sorted(context.items()))
        if key not in cache:
            cache[key] = _bake(cookies_session, context)
        return cache[key]

    return bake


@pytest.fixture(scope="session", autouse=True)
def _cookiecutter_config_of_the_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Bakes outside pytest-cookies (the CLI, cruft, the API) keep their replay files here, not in ~.

    And no bake runs `uv lock` (hundreds of them, a resolution each): a test that
    needs the post-gen hook's lock unsets SKIP_UV_LOCK itself; the others lock a
    copy of a bake when they need one (`helpers.lock_project`).
    """
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config = home / "config.yaml"
    config.write_text(f"cookiecutters_dir: {home / 'cookiecutters'}\nreplay_dir: {home / 'replay'}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COOKIECUTTER_CONFIG", str(config))
        patch.setenv("SKIP_UV_LOCK", "1")
        yield


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures tests record (image size, ...), which xdist would otherwise hide."""
    lines = [
        f"{report.nodeid}: {name} = {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
    ]
    if lines:
        terminalreporter.section("recorded figures")
        for line in lines:
            terminalreporter.line(line)
