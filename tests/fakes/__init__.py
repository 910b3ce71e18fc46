"""Fake third-party providers for the broker's tests.

They speak each provider's real wire format and run over real HTTP on 127.0.0.1
(``server.serve``), so the broker's own HTTP client, redirects and a headless browser are
exercised end to end without reaching the internet. ``providers.make_app`` builds the fakes,
``fixtures.fake_providers`` runs them for a test session.
"""
