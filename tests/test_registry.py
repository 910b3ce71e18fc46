"""Provider registration: ``broker.registry.load`` over the real and hand-made entry points,
the packaging of the built-in providers, and what provider modules may import."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import types
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest

from broker import registry
from broker.spec import (
    Action,
    ApiKeyProvider,
    Field,
    Header,
    OAuth2Provider,
    Provider,
    ProviderError,
    Request,
)

ROOT = Path(__file__).resolve().parents[1]
GROUP = "broker.providers"
BUILT_IN = {"slack", "shopify", "mailgun", "postmark"}
HERE = __name__  # "tests.test_registry": entry points below point at objects in this module


def ep(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{HERE}:{attr}", group=GROUP)


# -- fake providers (module level, so entry points can point at them) -----------------------

SHOP = Field(name="shop", label="Shop", pattern=r"[a-z0-9-]+\.fake\.example")


def _oauth(**overrides: object) -> OAuth2Provider:
    declared: dict[str, object] = {
        "slug": "fake-oauth", "name": "Fake", "category": "testing",
        "description": "A provider that only exists in tests.",
        "docs_url": "https://docs.fake.example/auth",
        "fields": (SHOP,),
        "authorize_url": "http://127.0.0.1:9/oauth/authorize",  # loopback: http allowed
        "token_url": "http://localhost:9/oauth/token",
        "revoke_url": "https://{shop}/oauth/revoke",  # a placeholder backed by a pattern
        "health_check": Request(url="https://{shop}/whoami"),
        "actions": (Action(name="things.read", description="Read things."),),
    }
    declared.update(overrides)
    return OAuth2Provider(**declared)  # type: ignore[arg-type]


def _api_key(**overrides: object) -> ApiKeyProvider:
    declared: dict[str, object] = {
        "slug": "fake-key", "name": "Fake key", "category": "testing",
        "description": "An API-key provider that only exists in tests.",
        "docs_url": "https://docs.fake.example/keys",
        "fields": (Field(name="api_key", label="API key", secret=True,
                         pattern=r"[A-Za-z0-9]{8,64}"),),
        "apply": Header(name="X-Fake-Key", template="{api_key}"),
        "verify": Request(url="https://api.fake.example/me"),
    }
    declared.update(overrides)
    return ApiKeyProvider(**declared)  # type: ignore[arg-type]


FAKE_OAUTH = _oauth()
FAKE_KEY = _api_key()
SAME_SLUG_ELSEWHERE = _oauth(name="Fake, second declaration")
NOT_A_PROVIDER = {"slug": "fake-dict", "name": "A dict"}
BARE_PROVIDER = Provider(slug="fake-bare", name="Bare", category="testing",
                         description="The base class itself: no setup type.",
                         docs_url="https://docs.fake.example/bare")


def not_a_provider_function() -> OAuth2Provider:
    return FAKE_OAUTH


# Invalid declarations: (entry-point name == slug, so validation is what rejects them).
INVALID = SimpleNamespace(
    http_authorize=_oauth(slug="fake-http-authorize",
                          authorize_url="http://auth.fake.example/oauth/authorize"),
    http_token=_oauth(slug="fake-http-token", token_url="http://auth.fake.example/token"),
    http_docs=_oauth(slug="fake-http-docs", docs_url="http://docs.fake.example/"),
    http_lookalike_loopback=_oauth(slug="fake-lookalike",
                                   token_url="http://127.0.0.1.evil.example/token"),
    http_userinfo_loopback=_oauth(slug="fake-userinfo",
                                  token_url="http://localhost@evil.example/token"),
    no_scheme=_oauth(slug="fake-no-scheme", token_url="auth.fake.example/token"),
    unconstrained_placeholder=_oauth(slug="fake-free-host",
                                     fields=(Field(name="shop", label="Shop"),)),
    undeclared_placeholder=_oauth(slug="fake-undeclared",
                                  authorize_url="https://{tenant}.fake.example/authorize"),
    bad_slug=_oauth(slug="Fake_Slug"),
    duplicate_actions=_oauth(slug="fake-dup-actions", actions=(
        Action(name="things.read", description="Read things."),
        Action(name="things.read", description="Read things again."))),
    bad_action_name=_oauth(slug="fake-bad-action",
                           actions=(Action(name="read", description="No resource."),)),
    duplicate_fields=_oauth(slug="fake-dup-fields", fields=(SHOP, SHOP)),
    bad_field_pattern=_oauth(slug="fake-bad-pattern", fields=(
        Field(name="shop", label="Shop", pattern="(unclosed"),)),
    empty_name=_oauth(slug="fake-empty-name", name="  "),
    no_secret_field=_api_key(slug="fake-no-secret", fields=(
        Field(name="api_key", label="API key", pattern=r"[A-Za-z0-9]{8,64}"),)),
    apply_undeclared_field=_api_key(slug="fake-apply-undeclared",
                                    apply=Header(name="X-Fake-Key", template="{token}")),
)

INVALID_CASES = [
    ("http_authorize", "https"),
    ("http_token", "https"),
    ("http_docs", "https"),
    ("http_lookalike_loopback", "https"),
    ("http_userinfo_loopback", "https"),
    ("no_scheme", "https"),
    ("unconstrained_placeholder", "{shop}"),
    ("undeclared_placeholder", "{tenant}"),
    ("bad_slug", "slug"),
    ("duplicate_actions", "duplicate action"),
    ("bad_action_name", "action"),
    ("duplicate_fields", "duplicate field"),
    ("bad_field_pattern", "pattern"),
    ("empty_name", "name"),
    ("no_secret_field", "secret"),
    ("apply_undeclared_field", "token"),
]


# -- the real entry points -------------------------------------------------------------------

def test_load_real_entry_points_is_a_read_only_mapping_of_built_ins() -> None:
    providers = registry.load()
    assert isinstance(providers, Mapping)
    assert set(providers) >= BUILT_IN
    for slug, provider in providers.items():
        assert isinstance(provider, Provider) and provider.slug == slug
    with pytest.raises(TypeError):
        providers["acme"] = FAKE_OAUTH  # type: ignore[index]
    with pytest.raises(TypeError):
        del providers["slack"]  # type: ignore[attr-defined]
    assert providers["slack"].setup_type == "oauth"
    assert providers["shopify"].setup_type == "oauth"
    assert providers["mailgun"].setup_type == "api_key"
    assert providers["postmark"].setup_type == "api_key"


# -- hand-made entry points ------------------------------------------------------------------

def test_load_given_entry_points_uses_only_those() -> None:
    providers = registry.load([ep("fake-oauth", "FAKE_OAUTH"), ep("fake-key", "FAKE_KEY")])
    assert dict(providers) == {"fake-key": FAKE_KEY, "fake-oauth": FAKE_OAUTH}
    with pytest.raises(TypeError):
        providers["slack"] = FAKE_OAUTH  # type: ignore[index]


def test_load_nothing() -> None:
    assert dict(registry.load([])) == {}


def test_same_name_twice_names_both_sources() -> None:
    with pytest.raises(ProviderError) as caught:
        registry.load([ep("fake-oauth", "FAKE_OAUTH"), ep("fake-oauth", "SAME_SLUG_ELSEWHERE")])
    message = str(caught.value)
    assert "fake-oauth" in message
    assert f"{HERE}:FAKE_OAUTH" in message
    assert f"{HERE}:SAME_SLUG_ELSEWHERE" in message


def test_same_name_twice_is_refused_even_for_the_same_object() -> None:
    with pytest.raises(ProviderError, match="fake-oauth"):
        registry.load([ep("fake-oauth", "FAKE_OAUTH"), ep("fake-oauth", "FAKE_OAUTH")])


def test_entry_point_name_must_be_the_slug() -> None:
    with pytest.raises(ProviderError) as caught:
        registry.load([ep("other-name", "FAKE_OAUTH")])
    message = str(caught.value)
    assert "other-name" in message and "fake-oauth" in message


@pytest.mark.parametrize("attr", ["NOT_A_PROVIDER", "not_a_provider_function",
                                  "INVALID", "SHOP"])
def test_object_that_is_not_a_provider_is_refused(attr: str) -> None:
    with pytest.raises(ProviderError, match=re.escape(f"{HERE}:{attr}")):
        registry.load([ep("fake-oauth", attr)])


def test_provider_class_instead_of_instance_is_refused() -> None:
    module = types.ModuleType("_registry_class_holder")
    module.provider = OAuth2Provider  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(ProviderError):
            registry.load([EntryPoint("fake-oauth", f"{module.__name__}:provider", GROUP)])
    finally:
        del sys.modules[module.__name__]


def test_bare_provider_base_instance_is_refused() -> None:
    with pytest.raises(ProviderError):
        registry.load([ep("fake-bare", "BARE_PROVIDER")])


@pytest.mark.parametrize("value", [f"{HERE}_no_such_module:provider", f"{HERE}:NO_SUCH_OBJECT"])
def test_unloadable_entry_point_is_a_provider_error_naming_it(value: str) -> None:
    with pytest.raises(ProviderError) as caught:
        registry.load([EntryPoint("fake-oauth", value, GROUP)])
    assert value in str(caught.value) and "fake-oauth" in str(caught.value)


def test_fakes_used_as_bases_are_valid() -> None:
    # The invalid cases below differ from these in one field each.
    FAKE_OAUTH.validate()
    FAKE_KEY.validate()


@pytest.mark.parametrize(("attr", "fragment"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES])
def test_invalid_declaration_is_a_provider_error(attr: str, fragment: str) -> None:
    provider = getattr(INVALID, attr)
    with pytest.raises(ProviderError) as caught:
        registry.load([ep(provider.slug, f"INVALID.{attr}")])
    message = str(caught.value)
    assert provider.slug in message
    assert fragment in message


def test_an_invalid_provider_spoils_the_whole_load() -> None:
    with pytest.raises(ProviderError, match="fake-http-token"):
        registry.load([ep("fake-oauth", "FAKE_OAUTH"),
                       ep("fake-http-token", "INVALID.http_token")])


# -- packaging of the built-in providers -----------------------------------------------------

def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared() -> dict[str, str]:
    doc = _pyproject()
    return dict(doc["project"]["entry-points"][GROUP])  # type: ignore[index]


def _provider_files() -> list[Path]:
    return sorted((ROOT / "providers").glob("*.py"))


def test_every_provider_module_is_declared_in_pyproject() -> None:
    modules = {f"providers.{p.stem}" for p in _provider_files() if p.stem != "__init__"}
    declared = {value.split(":", 1)[0] for value in _declared().values()}
    assert modules, "no provider modules found"
    assert modules == declared, (
        f"providers/*.py and [project.entry-points.\"{GROUP}\"] in pyproject.toml disagree: "
        f"modules only {sorted(modules - declared)}, declared only {sorted(declared - modules)}")


def test_declared_entry_points_are_installed() -> None:
    project = str(_pyproject()["project"]["name"])  # type: ignore[index]

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    installed = {e.name: e.value for e in entry_points(group=GROUP)
                 if e.dist is not None and canonical(e.dist.name) == canonical(project)}
    assert installed == _declared(), (
        "the installed entry points are stale (installed "
        f"{installed}, pyproject.toml declares {_declared()}): run `pip install -e .`")
    assert set(_declared()) <= set(registry.load())


# -- what a provider module may import -------------------------------------------------------

def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every import and dynamic import in a module."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            if base == "broker":  # `from broker import spec` is broker.spec
                found += [(node.lineno, f"broker.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            if name in ("__import__", "import_module"):
                found.append((node.lineno, f"<dynamic {name}()>"))
    return found


def _allowed(module: str) -> bool:
    return module == "broker.spec" or module.split(".")[0] in sys.stdlib_module_names


@pytest.mark.parametrize("path", _provider_files(), ids=lambda p: p.name)
def test_provider_modules_import_only_the_spec_and_stdlib(path: Path) -> None:
    bad = [f"{path.name}:{line} imports {what}"
           for line, what in _imports(ast.parse(path.read_text(), str(path)))
           if not _allowed(what)]
    assert not bad, "provider modules may import only broker.spec and the stdlib:\n" + \
        "\n".join(bad)


def test_import_check_catches_other_imports() -> None:
    source = ("import httpx\nfrom broker import store\nfrom broker.spec import Field\n"
              "from . import slack\nimport json\nimportlib.import_module('x')\n")
    verdicts = {what: _allowed(what) for _, what in _imports(ast.parse(source))}
    assert verdicts == {"httpx": False, "broker.store": False, "broker.spec": True,
                        ".": False, "json": True, "<dynamic import_module()>": False}
