"""Settings: one frozen object built from ``BROKER_*`` variables, and nothing else in the
package reads the environment (DESIGN 1.5)."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from broker.errors import ConfigError
from broker.settings import DEFAULT_DATA_DIR, Settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "broker"
ENV_READERS = {"settings.py", "cli.py", "cli_client.py"}  # the CLI client reads BROKER_API_*


def test_defaults_from_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s.database_url == f"sqlite:///{(DEFAULT_DATA_DIR / 'broker.db').resolve()}"
    assert s.database_url.startswith("sqlite:////")  # an absolute path
    assert s.redis_url is None
    assert s.keys_file is None and s.keys is None
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.dashboard_url is None
    assert s.return_url_allowlist == ()
    assert s.providers_file is None
    assert s.log_level == "INFO"


def test_an_explicit_mapping_ignores_the_process_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", "postgresql://u@db.example:5432/broker")
    monkeypatch.setenv("BROKER_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert Settings.from_env({}) == Settings.from_env({"UNRELATED": "x"})
    assert Settings.from_env({}).redis_url is None
    assert Settings.from_env().database_url == "postgresql://u@db.example:5432/broker"


ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("DATABASE_URL", "postgresql://broker@db.example:5432/broker", "database_url",
     "postgresql://broker@db.example:5432/broker"),
    ("DATABASE_URL", "sqlite:////var/lib/broker/broker.db", "database_url",
     "sqlite:////var/lib/broker/broker.db"),
    ("REDIS_URL", "redis://127.0.0.1:6379/3", "redis_url", "redis://127.0.0.1:6379/3"),
    ("KEYS_FILE", "/etc/broker/keys.json", "keys_file", Path("/etc/broker/keys.json")),
    ("KEYS", '{"primary": "k1", "keys": []}', "keys", '{"primary": "k1", "keys": []}'),
    ("PUBLIC_URL", "https://broker.example.com", "public_url", "https://broker.example.com"),
    ("PUBLIC_URL", "https://broker.example.com/", "public_url", "https://broker.example.com"),
    ("DASHBOARD_URL", "https://app.example.com/", "dashboard_url", "https://app.example.com"),
    ("RETURN_URL_ALLOWLIST", "https://app.example.com, https://admin.example.com/cb",
     "return_url_allowlist", ("https://app.example.com", "https://admin.example.com/cb")),
    ("RETURN_URL_ALLOWLIST", "https://app.example.com", "return_url_allowlist",
     ("https://app.example.com",)),
    ("PROVIDERS_FILE", "/etc/broker/providers.toml", "providers_file",
     Path("/etc/broker/providers.toml")),
    ("LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
    ("LOG_LEVEL", "warning", "log_level", "WARNING"),
]


@pytest.mark.parametrize(("var", "value", "attr", "expected"), ENV_CASES,
                         ids=[f"{c[0]}={c[1][:24]}" for c in ENV_CASES])
def test_each_variable_maps_to_its_field(var: str, value: str, attr: str,
                                         expected: Any) -> None:
    s = Settings.from_env({f"BROKER_{var}": value})
    assert getattr(s, attr) == expected
    # ... and only to that field.
    defaults = Settings.from_env({})
    others = {f.name for f in dataclasses.fields(Settings)} - {attr}
    assert {n: getattr(s, n) for n in others} == {n: getattr(defaults, n) for n in others}


def test_every_documented_variable_is_read() -> None:
    env = {f"BROKER_{c[0]}": c[1] for c in ENV_CASES}
    s = Settings.from_env(env)
    defaults = Settings.from_env({})
    changed = {f.name for f in dataclasses.fields(Settings)
               if getattr(s, f.name) != getattr(defaults, f.name)}
    assert changed >= {c[2] for c in ENV_CASES}


@pytest.mark.parametrize("var", ["DATABASE_URL", "REDIS_URL", "KEYS_FILE", "KEYS",
                                 "PUBLIC_URL", "LOG_LEVEL"])
def test_blank_values_count_as_unset(var: str) -> None:
    assert Settings.from_env({f"BROKER_{var}": "   "}) == Settings.from_env({})


@pytest.mark.parametrize("level", ["verbose", "TRACE", "1"])
def test_bad_log_level_is_a_config_error(level: str) -> None:
    with pytest.raises(ConfigError, match="BROKER_LOG_LEVEL"):
        Settings.from_env({"BROKER_LOG_LEVEL": level})


@pytest.mark.parametrize("url", ["ftp://broker.example.com", "broker.example.com",
                                 "//broker.example.com", "javascript:alert(1)",
                                 "http://broker.example.com", "http://10.0.0.5:8000",
                                 "http://127.0.0.1.evil.example", "https://u:p@broker.example.com",
                                 "https://broker.example.com/?next=x"])
def test_non_http_public_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="BROKER_PUBLIC_URL"):
        Settings.from_env({"BROKER_PUBLIC_URL": url})


@pytest.mark.parametrize("url", ["https://broker.example.com", "https://broker.example.com/b",
                                 "http://127.0.0.1:8000", "http://localhost:8000",
                                 "http://[::1]:8000"])
def test_public_url_is_https_or_loopback_http(url: str) -> None:
    # OA-05: the redirect URI is built from it and never from request headers.
    assert Settings.from_env({"BROKER_PUBLIC_URL": url}).public_url == url


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.database_url = "sqlite:///elsewhere.db"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.keys = "{}"  # type: ignore[misc]
    assert s.database_url == Settings.from_env({}).database_url


def test_repr_hides_the_inline_key_ring() -> None:
    secret = '{"primary": "k1", "keys": [{"id": "k1", "secret": "c2VjcmV0LW1hdGVyaWFs"}]}'
    s = Settings(database_url="sqlite://", keys=secret)
    for text in (repr(s), str(s), f"{s}", repr(Settings.from_env({"BROKER_KEYS": secret}))):
        assert secret not in text
        assert "c2VjcmV0LW1hdGVyaWFs" not in text
    assert s.keys == secret


# -- nothing reads the environment at import time, or outside settings/cli -------------------

def test_importing_the_package_does_not_read_the_environment(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import importlib, pkgutil
        import broker.app, broker.cli, broker.store, broker.registry
        import broker
        for info in pkgutil.walk_packages(broker.__path__, "broker."):
            if info.name == "broker.__main__" or info.name.startswith("broker.migrations"):
                continue
            importlib.import_module(info.name)
        print("imported")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    traps = {
        "BROKER_DATABASE_URL": "garbage://::not a url::",
        "BROKER_LOG_LEVEL": "not-a-level",
        "BROKER_PUBLIC_URL": "not-a-url",
        "BROKER_KEYS": "not json",
        "BROKER_KEYS_FILE": str(tmp_path / "missing.json"),
    }
    with pytest.raises(ConfigError):  # so reading them at import time would fail the import
        Settings.from_env(traps)
    env.update(traps)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "imported"
    assert list(tmp_path.iterdir()) == []  # and created nothing (no .broker/ directory)


def _env_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("environ", "environb", "getenv", "getenvb")):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [f"{path.relative_to(ROOT)}:{node.lineno} from os import {a.name}"
                      for a in node.names if a.name in ("environ", "environb", "getenv",
                                                        "getenvb", "*")]
    return found


def test_only_settings_and_cli_read_the_environment() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert any(p.name == "settings.py" for p in files)
    offenders = [hit for p in files if p.relative_to(PACKAGE).as_posix() not in ENV_READERS
                 for hit in _env_reads(p)]
    assert not offenders, "only broker/settings.py and the CLI modules may read the " \
        "environment:\n" + "\n".join(offenders)
    assert _env_reads(PACKAGE / "settings.py"), "the check no longer sees settings.py's read"


def test_previous_client_secrets_from_the_environment() -> None:
    settings = Settings.from_env({"BROKER_SHOPIFY_CLIENT_ID": "id",
                                  "BROKER_SHOPIFY_CLIENT_SECRET": "new",
                                  "BROKER_SHOPIFY_CLIENT_SECRET_PREVIOUS": "old1, old2"})
    client = settings.oauth_clients["SHOPIFY"]
    assert (client.client_secret, client.previous_secrets) == ("new", ("old1", "old2"))
    assert "old1" not in repr(settings) and "new" not in repr(client)
    with pytest.raises(ConfigError):
        Settings.from_env({"BROKER_SHOPIFY_CLIENT_SECRET_PREVIOUS": "old"})


def test_previous_client_secrets_from_the_providers_file(tmp_path: Path) -> None:
    from broker import providers_file, registry

    path = tmp_path / "providers.toml"
    path.write_text('[providers.shopify]\nclient_id = "id"\nclient_secret = "new"\n'
                    'previous_client_secrets = ["old"]\n')
    _, clients = providers_file.load(path, registry.load())
    assert clients["shopify"].previous_secrets == ("old",)
    path.write_text('[providers.shopify]\nclient_id = "id"\nclient_secret = "new"\n'
                    'previous_client_secrets = "old"\n')
    with pytest.raises(ConfigError, match="previous_client_secrets"):
        providers_file.load(path, registry.load())
