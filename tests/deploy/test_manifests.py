"""The deployment files agree with the code and with each other.

compose.yaml, deploy/k8s/*.yaml, the Dockerfile and deploy/haproxy/haproxy.cfg are
parsed (PyYAML) and checked against :class:`services.common.config.Settings`:
every ``CHAT_*`` variable is a real setting whose value the gateway accepts, ports
agree across the files, the grace periods outlast the drain, the probes hit
``/readyz`` and ``/healthz``.

Real validators, not imitations: ``haproxy -c -f`` checks the HAProxy config with
the variables compose gives it, and ``docker compose config`` (the v2 plugin) or
else ``docker-compose config`` (v1, Debian's ``docker-compose`` package) checks
compose.yaml.  On this project's machines the Docker CLI has no compose plugin and
no engine; ``apt-get install docker-compose`` provides a v1 that validates offline.
When neither is installed that one test is skipped, with the reason shown.
No Kubernetes validator runs here (no kubectl, no cluster): the k8s manifests get
only the structural checks below.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import ConfigError, Settings, env_name, load_settings
from tests.support.redis_acl import aclfile_text, documented_acl_lines

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"
K8S = REPO / "deploy" / "k8s"

SETTINGS_ENV = {env_name(f.name) for f in dataclasses.fields(Settings)}
GATEWAYS = ("gw1", "gw2", "gw3")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def settings_from(env: dict[str, str]) -> Settings:
    """What the gateway would make of this environment; fails the test if it rejects it."""
    try:
        return load_settings([], {k: v for k, v in env.items() if k.startswith("CHAT_")})
    except ConfigError as exc:
        pytest.fail(f"the gateway rejects this configuration: {exc}")


def duration_s(value: str | int | float) -> float:
    """Compose and HAProxy durations: ``20s``, ``1m30s``, ``1500ms``, ``7d`` or a
    number of seconds."""
    text = str(value)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|d|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def haproxy_variables() -> set[str]:
    text = HAPROXY_CFG.read_text()
    return set(re.findall(r"\$\{(LB_[A-Z0-9_]+)", text)) | set(
        re.findall(r"defined\((LB_[A-Z0-9_]+)\)", text)
    )


def published(service: dict[str, Any]) -> dict[int, int]:
    """Published ports of a compose service as {container port: host port}."""
    result = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result[int(entry["target"])] = int(entry["published"])
            continue
        parts = str(entry).split("/")[0].split(":")
        result[int(parts[-1])] = int(parts[-2])
    return result


# -- compose.yaml -----------------------------------------------------------------------------


def test_compose_chat_variables_are_real_settings() -> None:
    services = load_compose()["services"]
    used = {name for svc in services.values() for name in service_env(svc) if name.startswith("CHAT_")}
    assert used, "compose.yaml sets no CHAT_* variable"
    assert used <= SETTINGS_ENV, f"not settings: {sorted(used - SETTINGS_ENV)}"


def test_compose_gateways_are_valid_and_agree_with_haproxy() -> None:
    services = load_compose()["services"]
    lb = service_env(services["haproxy"])
    assert set(lb) <= haproxy_variables(), f"unknown LB_*: {sorted(set(lb) - haproxy_variables())}"
    gateway_ids = set()
    for i, name in enumerate(GATEWAYS, start=1):
        svc = services[name]
        settings = settings_from(service_env(svc))
        gateway_ids.add(settings.gateway_id)
        assert settings.listen.host == "0.0.0.0"
        assert settings.http_listen is not None and settings.http_listen.host == "0.0.0.0"
        assert settings.redis_url.host == "redis" and "redis" in services
        # HAProxy sends to the chat port and health-checks the HTTP port.
        host, port = lb[f"LB_GW{i}_ADDR"].rsplit(":", 1)
        assert host == name
        assert int(port) == settings.listen.port
        assert int(lb[f"LB_GW{i}_CHECK_PORT"]) == settings.http_listen.port
        # HTTP is published for /metrics; the chat port only through HAProxy.
        assert settings.http_listen.port in published(svc)
        assert settings.listen.port not in published(svc)
        # PROXY protocol from HAProxy, and only from HAProxy's fixed address.
        assert settings.proxy_protocol is True
        lb_ip = services["haproxy"]["networks"]["chat"]["ipv4_address"]
        assert settings.trusted_proxies == (f"{lb_ip}/32",)
        # Docker's SIGKILL must not cut the drain short.
        assert duration_s(svc["stop_grace_period"]) > settings.drain_timeout_s
    assert gateway_ids == set(GATEWAYS)
    assert port_of(lb["LB_BIND"]) in published(services["haproxy"])


def test_compose_haproxy_uses_the_shared_config_read_only() -> None:
    haproxy = load_compose()["services"]["haproxy"]
    mounts = [str(v) for v in haproxy["volumes"]]
    assert "./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in mounts
    subnet = load_compose()["networks"]["chat"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    ip = ipaddress.ip_address(haproxy["networks"]["chat"]["ipv4_address"])
    assert ip in ipaddress.ip_network(subnet)


def compose_validator() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_passes_a_real_compose_validator() -> None:
    validator = compose_validator()
    if validator is None:
        pytest.skip(
            "no compose implementation: docker has no compose plugin here and docker-compose "
            "is not installed (apt-get install docker-compose)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = subprocess.run(
        [*validator, "-f", str(COMPOSE), "config", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- HAProxy ----------------------------------------------------------------------------------


def test_haproxy_config_passes_haproxy_check_with_compose_variables() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    env.update(service_env(load_compose()["services"]["haproxy"]))
    result = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CFG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # The compose host names do not resolve here: HAProxy warns and carries on
    # (init-addr ... none), which is what lets it start before the gateways.
    assert result.returncode == 0, result.stdout + result.stderr


def haproxy_sections() -> dict[str, list[str]]:
    """``{"defaults": [...], "backend gateways": [...], ...}``, comments and ``.if`` lines dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY_CFG.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip() or line.lstrip().startswith("."):
            continue
        if not raw[0].isspace():
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def test_haproxy_config_has_the_required_policy() -> None:
    sections = haproxy_sections()
    defaults = sections["defaults"]
    backend = sections["backend gateways"]
    assert "mode tcp" in defaults
    assert "gateways" in " ".join(sections["frontend chat"])
    for required in ("balance leastconn", "option httpchk GET /readyz", "http-check expect status 200"):
        assert required in backend, required
    default_server = " ".join(line for line in backend if line.startswith("default-server "))
    assert "send-proxy-v2" in default_server.split()
    assert "check" in default_server.split()
    for i in range(1, 4):
        assert f'server gw{i} "${{LB_GW{i}_ADDR}}" check port "${{LB_GW{i}_CHECK_PORT}}"' in backend
    timeouts = {
        parts[1]: duration_s(parts[2])
        for parts in (line.split() for line in defaults)
        if parts[0] == "timeout"
    }
    assert {"connect", "check", "client", "server", "tunnel"} <= set(timeouts)
    # A quiet person is not cut by the balancer; dead peers are found by keepalive.
    assert min(timeouts["client"], timeouts["server"], timeouts["tunnel"]) >= 24 * 3600
    options = {" ".join(line.split()) for lines in sections.values() for line in lines}
    assert {"option clitcpka", "option srvtcpka"} <= options
    assert timeouts["connect"] <= 10 and timeouts["check"] <= 10


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_builds_a_non_root_gateway_image() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert ("CMD", '["chat-gateway"]') in instructions
    assert any(k == "RUN" and "pip install ." in v for k, v in instructions)
    user = [v for k, v in instructions if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    env: dict[str, str] = {}
    for k, v in instructions:
        if k == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", v))
    settings = settings_from(env)
    assert settings.http_listen is not None
    exposed = {int(p.split("/")[0]) for k, v in instructions if k == "EXPOSE" for p in v.split()}
    assert exposed == {settings.listen.port, settings.http_listen.port}
    healthcheck = " ".join(v for k, v in instructions if k == "HEALTHCHECK")
    assert f"127.0.0.1:{settings.http_listen.port}/healthz" in healthcheck


# -- Kubernetes -------------------------------------------------------------------------------


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_kind(kind: str, name: str) -> dict[str, Any]:
    for doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def gateway_container() -> dict[str, Any]:
    deployment = k8s_kind("Deployment", "chat-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's env with downward-API and secret values stood in for."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = "chat-gateway-7d9f8c6b5-x2kq9"
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = "redis://chat-gateway:secret@redis.example:6379/0"
        else:
            raise AssertionError(f"unexpected env source: {item}")
    return env


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


def test_k8s_chat_variables_are_real_settings() -> None:
    names = {item["name"] for item in gateway_container()["env"]}
    chat = {n for n in names if n.startswith("CHAT_")}
    assert chat <= SETTINGS_ENV, f"not settings: {sorted(chat - SETTINGS_ENV)}"
    commented = set(re.findall(r"name: (CHAT_[A-Z_]+)", (K8S / "gateway.yaml").read_text()))
    assert commented <= SETTINGS_ENV, f"not settings: {sorted(commented - SETTINGS_ENV)}"


def test_k8s_gateway_id_comes_from_the_pod_name() -> None:
    (item,) = [e for e in gateway_container()["env"] if e["name"] == "CHAT_GATEWAY_ID"]
    assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_k8s_ports_probes_and_grace_period_agree_with_settings() -> None:
    deployment = k8s_kind("Deployment", "chat-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container()
    settings = settings_from(container_env(container))
    assert settings.http_listen is not None
    assert settings.listen.host == "0.0.0.0" and settings.http_listen.host == "0.0.0.0"
    assert named_port(container, "chat") == settings.listen.port
    assert named_port(container, "http") == settings.http_listen.port

    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/healthz"
    assert named_port(container, readiness["port"]) == settings.http_listen.port
    assert named_port(container, liveness["port"]) == settings.http_listen.port

    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + settings.drain_timeout_s

    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_service_is_a_tcp_load_balancer_onto_the_chat_port() -> None:
    service = k8s_kind("Service", "chat")
    deployment = k8s_kind("Deployment", "chat-gateway")
    container = gateway_container()
    settings = settings_from(container_env(container))
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = spec["ports"]
    assert port["protocol"] == "TCP"
    assert named_port(container, port["targetPort"]) == settings.listen.port
    # The client's address reaches the gateway either way, never both.
    if settings.proxy_protocol:
        assert spec.get("externalTrafficPolicy") != "Local"
    else:
        assert spec.get("externalTrafficPolicy") == "Local"

    http = k8s_kind("Service", "chat-gateway-http")
    (http_port,) = http["spec"]["ports"]
    assert settings.http_listen is not None
    assert named_port(container, http_port["targetPort"]) == settings.http_listen.port


def test_compose_redis_uses_the_documented_acl() -> None:
    services = load_compose()["services"]
    redis_svc = services["redis"]
    command = [str(part) for part in redis_svc["command"]]
    aclfile = command[command.index("--aclfile") + 1]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in redis_svc["volumes"]
              if str(v).startswith("./")}
    assert mounts[aclfile] == "./deploy/redis/users.acl"
    assert str(redis_svc["volumes"][-1]).endswith(":ro")
    lines = [line for line in (REPO / "deploy" / "redis" / "users.acl").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    gateway_url = settings_from(service_env(services["gw1"])).redis_url
    assert gateway_url.username == "chat-gateway" and gateway_url.password
    health = [str(part) for part in redis_svc["healthcheck"]["test"]]
    admin_password = health[health.index("--pass") + 1]
    # The file is the documented ACL with compose's passwords, line for line.
    assert "\n".join(lines) + "\n" == aclfile_text(gateway_url.password, admin_password)
    for name in GATEWAYS:
        assert settings_from(service_env(services[name])).redis_url == gateway_url


def test_k8s_redis_url_comes_from_a_secret_with_a_user() -> None:
    container = gateway_container()
    item = next(e for e in container["env"] if e["name"] == "CHAT_REDIS_URL")
    assert item["valueFrom"]["secretKeyRef"]["name"] == "chat-redis"
    readme = (REPO / "deploy" / "k8s" / "README.md").read_text()
    assert "redis://chat-gateway:" in readme
    for line in documented_acl_lines():
        assert line in readme, f"deploy/k8s/README.md lacks the ACL line {line[:40]!r}..."
