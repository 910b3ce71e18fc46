"""Pytest fixtures for the fake providers. Import them where needed, e.g. in conftest.py:

    from tests.fakes.fixtures import fake_providers, fresh_fakes  # noqa: F401

``fake_providers`` (session): one server for the whole run, yields ``(base_url, state)``.
``fakes`` (per test, defined by ``fresh_fakes``): the same pair, with ``state.reset()`` before
and after the test so knobs and records never leak between tests. The function has another
name than the fixture so a module that imports it can still take ``fakes`` as a parameter
without a lint error (F811).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.providers import FakeState, make_app
from tests.fakes.server import serve


@pytest.fixture(scope="session")
def fake_providers() -> Iterator[tuple[str, FakeState]]:
    app, state = make_app()
    with serve(app) as base_url:
        yield base_url, state
        state.reset()  # lets any handler parked by token_mode="hang" return before shutdown


@pytest.fixture(name="fakes")
def fresh_fakes(fake_providers: tuple[str, FakeState]) -> Iterator[tuple[str, FakeState]]:
    base_url, state = fake_providers
    state.reset()
    yield base_url, state
    state.reset()
