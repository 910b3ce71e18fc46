"""deploy/ stays in step with the code.

- deploy/env.example documents exactly the BROKER_* settings that ``Settings.from_env`` reads,
  plus the CLI client's own variables, so a setting added without documentation fails here.
- Every broker command that deploy/ runs (Dockerfile CMD, compose ``command``, Kubernetes
  ``command``/``args``) and every `broker ...` written in backticks in deploy/ parses with the
  real CLI parser.

PyYAML is not a dependency, so the files are read as text. That works because they write each
command as a one-line flow list (``args: ["serve", "--port", "8000"]``); a test fails, saying
so, when one is written otherwise.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from broker import cli
from broker import settings as settings_module
from broker.app import routes

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"

CLIENT_HEADER = "# == Used by the CLI client"
CLIENT_VARS = {"BROKER_API_URL", "BROKER_API_KEY", "BROKER_PROJECT"}
# Commands deploy/ already mentions (commented out) before the CLI has them.
PLANNED: set[str] = set()

ENV_LINE = re.compile(r"^(?:#\s*)?(BROKER_[A-Z0-9_]+)=")
BROKER_NAME = re.compile(r"\bBROKER_[A-Z][A-Z0-9_]*")
SNIPPET = re.compile(r"`broker ([^`]*)`")


# -- helpers ---------------------------------------------------------------------------------

def deploy_texts() -> dict[str, str]:
    """The files under deploy/ that are ours (not a local keys.json or .env)."""
    found = {
        str(p.relative_to(ROOT)): p.read_text()
        for p in DEPLOY.rglob("*")
        if p.is_file() and (p.suffix in (".yaml", ".yml") or p.name in (
            "Dockerfile", "Dockerfile.dockerignore", "env.example"))
    }
    assert found, "deploy/ holds no files"
    return found


def from_env_names() -> set[str]:
    """BROKER_* names read by Settings.from_env: get("NAME") and env.get("BROKER_NAME")."""
    tree = ast.parse(Path(settings_module.__file__).read_text())
    from_env = next(n for n in ast.walk(tree)
                    if isinstance(n, ast.FunctionDef) and n.name == "from_env")
    names = set()
    for node in ast.walk(from_env):
        if not isinstance(node, ast.Call):
            continue
        arg = node.args[0] if node.args else None
        literal = arg.value if isinstance(arg, ast.Constant) and isinstance(
            arg.value, str) else None
        if isinstance(node.func, ast.Name) and node.func.id == "get":
            assert literal is not None, (
                f"settings.py line {node.lineno}: get() with a computed name; document the "
                "pattern in deploy/env.example and teach tests/test_deploy.py about it")
            names.add(f"BROKER_{literal}")
        elif (isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and literal and re.fullmatch(r"BROKER_[A-Z0-9_]+", literal)):
            names.add(literal)
    return names


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def direct_env_reads() -> dict[str, str]:
    """BROKER_* names the package reads straight from os.environ / getenv, and where."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "broker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            key = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                f = node.func
                if (isinstance(f, ast.Attribute) and (
                        (f.attr in ("get", "pop", "setdefault") and _is_environ(f.value))
                        or f.attr == "getenv")) or (isinstance(f, ast.Name) and f.id == "getenv"):
                    key = node.args[0].value
            elif (isinstance(node, ast.Subscript) and _is_environ(node.value)
                  and isinstance(node.slice, ast.Constant)):
                key = node.slice.value
            if isinstance(key, str) and key.startswith("BROKER_"):
                found.setdefault(key, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def env_example() -> tuple[list[str], list[tuple[int, str]], int]:
    """(lines, [(index, BROKER name)] of variable lines, index of the CLI client header)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    entries = [(i, m.group(1)) for i, line in enumerate(lines) if (m := ENV_LINE.match(line))]
    headers = [i for i, line in enumerate(lines) if line.startswith(CLIENT_HEADER)]
    assert len(headers) == 1, f"deploy/env.example needs one {CLIENT_HEADER!r} section header"
    return lines, entries, headers[0]


def subcommands() -> set[str]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def parse_error(argv: list[str]) -> str | None:
    """None when ``broker ARGV`` parses; otherwise argparse's complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        return err.getvalue().strip() or f"exit {exc.code}"
    return None


def flow_list(value: str, where: str) -> list[str]:
    try:
        argv = json.loads(value)
    except ValueError:
        argv = None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        pytest.fail(f"{where}: write the command as a one-line list of strings, "
                    f'e.g. ["serve", "--port", "8000"], not {value!r}')
    return argv


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def run_argvs() -> dict[str, list[list[str]]]:
    """file -> argvs (after ``broker``) of every broker command it runs (comments excluded)."""
    runs: dict[str, list[list[str]]] = {}
    instructions = dockerfile_instructions()
    cmds = [rest for word, rest in instructions if word == "CMD"]
    entrypoints = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert len(cmds) == 1 and len(entrypoints) == 1, "deploy/Dockerfile: one CMD, one ENTRYPOINT"
    assert flow_list(entrypoints[0], "Dockerfile ENTRYPOINT") == ["broker"]
    runs["deploy/Dockerfile"] = [flow_list(cmds[0], "Dockerfile CMD")]

    for path in [COMPOSE, *sorted(K8S.glob("*.yaml"))]:
        rel = str(path.relative_to(ROOT))
        runs[rel] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"^\s*(?:-\s+)?(command|args):\s*(.*?)\s*(?:#.*)?$", line)
            if not m:
                continue
            key, argv = m.group(1), flow_list(m.group(2), f"{rel}:{n}")
            if path == COMPOSE:
                # compose's command replaces CMD: arguments of the image's ENTRYPOINT, broker.
                assert argv[0] != "broker", f"{rel}:{n}: this would run `broker broker ...`"
            elif key == "command":
                # Kubernetes' command replaces the ENTRYPOINT.
                assert argv[0] == "broker", f"{rel}:{n}: runs {argv[0]!r}, not broker"
                argv = argv[1:]
                if not argv:
                    continue
            runs[rel].append(argv)
    return runs


# -- settings are documented -----------------------------------------------------------------

def test_env_example_documents_exactly_the_settings_from_env_reads() -> None:
    names = from_env_names()
    assert {"BROKER_DATABASE_URL", "BROKER_LOG_LEVEL"} <= names, "could not read from_env"
    _, entries, header = env_example()
    server = [name for i, name in entries if i < header]
    assert len(server) == len(set(server)), f"listed twice: {sorted(server)}"
    missing, stale = names - set(server), set(server) - names
    assert not missing, f"settings read by Settings.from_env but not in deploy/env.example: " \
                        f"{sorted(missing)}"
    assert not stale, f"deploy/env.example lists settings from_env does not read: {sorted(stale)}"


def test_env_example_lists_the_cli_client_variables_in_their_own_section() -> None:
    _, entries, header = env_example()
    client = [name for i, name in entries if i > header]
    assert len(client) == len(set(client)), f"listed twice: {sorted(client)}"
    assert set(client) == CLIENT_VARS


def test_env_example_comments_every_variable() -> None:
    lines, entries, _ = env_example()
    for i, name in entries:
        above = lines[i - 1] if i else ""
        assert above.startswith("#") and not ENV_LINE.match(above), (
            f"deploy/env.example: {name} needs a # comment on the line above it")


def test_package_reads_no_undocumented_variable_outside_from_env() -> None:
    _, entries, _ = env_example()
    documented = {name for _, name in entries}
    undocumented = {n: w for n, w in direct_env_reads().items() if n not in documented}
    assert not undocumented, f"read from the environment but not in deploy/env.example: " \
                             f"{undocumented}"


def test_deploy_files_name_only_real_settings() -> None:
    known = from_env_names() | CLIENT_VARS
    for rel, text in deploy_texts().items():
        unknown = set(BROKER_NAME.findall(text)) - known
        assert not unknown, f"{rel} names BROKER_* variables nothing reads: {sorted(unknown)}"


# -- commands are real -----------------------------------------------------------------------

def test_every_command_deploy_runs_parses() -> None:
    for rel, argvs in run_argvs().items():
        for argv in argvs:
            error = parse_error(argv)
            assert error is None, f"{rel} runs `broker {shlex.join(argv)}`: {error}"


def test_deploy_runs_serve_and_migrate_where_expected() -> None:
    first = {rel: {argv[0] for argv in argvs} for rel, argvs in run_argvs().items()}
    assert first["deploy/Dockerfile"] == {"serve"}
    assert first["deploy/compose.yaml"] >= {"serve", "migrate"}
    assert first["deploy/k8s/deployment.yaml"] == {"serve"}
    assert first["deploy/k8s/migrate-job.yaml"] == {"migrate"}


def test_every_broker_command_written_in_deploy_parses() -> None:
    known = subcommands()
    seen = 0
    for rel, text in deploy_texts().items():
        for snippet in SNIPPET.findall(text):
            argv = shlex.split(snippet)
            if argv and argv[0] in PLANNED and argv[0] not in known:
                continue
            seen += 1
            error = parse_error(argv)
            assert error is None, f"{rel} mentions `broker {snippet}`: {error}"
    assert seen, "no `broker ...` snippet found in deploy/: is the pattern still right?"


def test_the_worker_runs_beside_the_servers() -> None:
    assert "worker" in subcommands()
    assert re.search(r'^\s*command: \["worker"\]', COMPOSE.read_text(), re.M)
    assert 'args: ["worker"]' in (K8S / "worker.yaml").read_text()


def test_planned_commands_stay_commented_out_until_the_cli_has_them() -> None:
    known = subcommands()
    compose = COMPOSE.read_text()
    for name in PLANNED:
        assert name not in known, (
            f"`broker {name}` exists now: enable its service in deploy/compose.yaml (and add it "
            f"to deploy/k8s/), then drop {name!r} from PLANNED in tests/test_deploy.py")
        assert re.search(rf'^\s*#\s*command: \["{name}"\]', compose, re.M), (
            f"deploy/compose.yaml should keep the {name} service, commented out")


# -- wiring ----------------------------------------------------------------------------------

def test_probes_and_healthcheck_hit_routes_the_app_serves() -> None:
    served = {r.path for r in routes()}
    deployment = (K8S / "deployment.yaml").read_text()
    paths = re.findall(r"httpGet:\s*\n\s*path:\s*(\S+)", deployment)
    assert {"/healthz", "/readyz"} <= set(paths)
    healthchecks = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    urls = re.findall(r"https?://[^'\"\s]+", healthchecks[0])
    assert [urlsplit(u).path for u in urls] == ["/healthz"]
    for path in paths + [urlsplit(u).path for u in urls]:
        assert path in served, f"probe path {path} is not a route of broker.app"


def test_key_ring_paths_match_their_mounts() -> None:
    compose = COMPOSE.read_text()
    keys_files = set(re.findall(r"^\s*BROKER_KEYS_FILE:\s*(\S+)", compose, re.M))
    assert len(keys_files) == 1
    secret = keys_files.pop().removeprefix("/run/secrets/")
    assert re.search(rf"^  {re.escape(secret)}:\s*\n\s+file: \./keys\.json\s*$", compose, re.M), (
        f"compose BROKER_KEYS_FILE names secret {secret!r}, which is not the ./keys.json secret")

    deployment = (K8S / "deployment.yaml").read_text()
    m = re.search(r"- name: BROKER_KEYS_FILE\s*\n\s*value:\s*(\S+)", deployment)
    assert m, "deployment.yaml sets no BROKER_KEYS_FILE"
    mount_dir, _, file_name = m.group(1).rpartition("/")
    mount = re.search(rf"mountPath: {re.escape(mount_dir)}\s*\n\s*readOnly: true", deployment)
    assert mount, f"deployment.yaml mounts nothing read-only at {mount_dir}"
    assert re.search(rf"- key: {re.escape(file_name)}\s*\n\s*path: {re.escape(file_name)}",
                     deployment), f"the key-ring volume does not project {file_name}"


def test_image_is_non_root_and_keeps_secrets_out_of_the_context() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2 and froms[-1] == "python:3.11-slim"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    ignored = set((DEPLOY / "Dockerfile.dockerignore").read_text().split())
    assert {"**/keys.json", ".venv", ".git", ".broker"} <= ignored


def test_configmap_holds_real_settings_and_both_deployments_use_it() -> None:
    configmap = (K8S / "configmap.yaml").read_text()
    keys = set(re.findall(r"^  (BROKER_[A-Z0-9_]+):", configmap, re.M))
    assert keys and keys <= from_env_names(), keys - from_env_names()
    assert "BROKER_KEYS" not in keys and "BROKER_DATABASE_URL" not in keys  # secrets elsewhere
    for name in ("deployment.yaml", "worker.yaml"):
        text = (K8S / name).read_text()
        assert re.search(r"envFrom:\n\s+- configMapRef:\n\s+name: integration-broker", text), name


# -- parsed manifests --------------------------------------------------------------------------

def _yaml(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_manifest_parses_and_names_its_kind() -> None:
    seen = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml(path):
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            assert doc["metadata"]["name"].startswith("integration-broker"), path.name
            seen[(doc["kind"], doc["metadata"]["name"])] = doc
    kinds = {kind for kind, _ in seen}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Job", "Secret",
            "ConfigMap"} <= kinds


def test_parsed_manifests_agree_with_the_code() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d
            for path in K8S.glob("*.yaml") for d in _yaml(path)}
    server = docs[("Deployment", "integration-broker")]
    [container] = server["spec"]["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert container["args"][:1] == ["serve"] and str(port) in container["args"]
    served = {r.path for r in routes()}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in served
        assert container[probe]["httpGet"]["port"] == "http"
    service = docs[("Service", "integration-broker")]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= \
        server["spec"]["template"]["metadata"]["labels"].items()
    hpa = docs[("HorizontalPodAutoscaler", "integration-broker")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "integration-broker"
    names = from_env_names()
    for doc in docs.values():
        if doc["kind"] in ("Deployment", "Job"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                for env in c.get("env", []):
                    assert env["name"] in names, env["name"]
                assert c["args"][0] in subcommands()


def test_compose_parses_and_agrees_with_the_code() -> None:
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "broker", "worker"} <= set(services)
    assert services["broker"]["command"][0] == "serve"
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["broker"]["depends_on"]["migrate"]["condition"] == \
        "service_completed_successfully"
    names = from_env_names()
    for name in ("broker", "worker", "migrate"):
        assert set(services[name]["environment"]) <= names, name
