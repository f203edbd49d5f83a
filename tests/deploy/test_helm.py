"""The Helm chart, linted and rendered offline, every manifest checked against
the Kubernetes schemas. No cluster and no helm binary: helm-python-sdk binds
Helm's Go SDK (a shared library in its wheel; run in a child process, see
tests/deploy/helm_sdk.py), kubernetes-validate ships the schemas.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpcheck.config import Settings
from tests.deploy.conftest import CHART
from tests.deploy.helm_sdk import HelmFailure, HelmSDK

kubernetes_validate = pytest.importorskip("kubernetes_validate")

VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
# The newest Kubernetes minor this chart targets, and the oldest its kubeVersion allows.
KUBE_VERSIONS = ("1.35.0", "1.25.0")
RELEASE = "smtpcheck"
NAMESPACE = "mail"

SMTPCHECK_UID = 10001
DNS_PORT = 53
REDIS_PORT = 6379


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text()) or {}
    assert isinstance(values, dict)
    return values


Render = Callable[[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm_sdk: HelmSDK) -> Render:
    """render(values): every object the chart makes for them (NOTES.txt left out)."""

    def render(values: dict[str, Any]) -> list[dict[str, Any]]:
        rendered = helm_sdk.render(values, release=RELEASE, namespace=NAMESPACE)
        docs: list[dict[str, Any]] = []
        for path, text in sorted(rendered.items()):
            if path.endswith((".yaml", ".yml")):
                docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    return render


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def component(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [
        doc
        for doc in of_kind(docs, kind)
        if doc["metadata"]["labels"].get("app.kubernetes.io/component") == name
    ]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield where, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield where, doc["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def secret_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = {}
    for secret in of_kind(docs, "Secret"):
        for key, value in secret.get("data", {}).items():
            data[key] = base64.b64decode(value).decode()
    return data


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int | str]]:
    ports = set()
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), f"{policy['metadata']['name']}: an egress rule open to any port"
        ports.update((port["protocol"], port["port"]) for port in rule["ports"])
    return ports


@pytest.fixture(scope="module")
def defaults(render: Render) -> list[dict[str, Any]]:
    return render({})


@pytest.fixture(scope="module")
def external_values() -> dict[str, Any]:
    return load_values(CHART / "ci" / "external-values.yaml")


@pytest.fixture(scope="module")
def external(render: Render, external_values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(external_values)


# ---------------------------------------------------------------------------
# Lint and schema validation, for every values file
# ---------------------------------------------------------------------------


def test_the_go_runtime_stays_out_of_this_process(helm_sdk: HelmSDK) -> None:
    assert "helm_python" not in sys.modules


def test_there_is_more_than_one_values_file() -> None:
    names = {path.name for path in VALUES_FILES}
    assert {"default-values.yaml", "external-values.yaml"} <= names


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda path: path.stem)
def test_chart_lints_clean(helm_sdk: HelmSDK, values_file: Path) -> None:
    report = helm_sdk.lint(
        load_values(values_file), namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}"
    )
    assert report["errors"] == []
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda path: path.stem)
def test_every_manifest_matches_the_kubernetes_schema(
    render: Render, values_file: Path, kube_version: str
) -> None:
    docs = render(load_values(values_file))
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
        assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


def test_strict_validation_catches_an_unknown_field(defaults: list[dict[str, Any]]) -> None:
    """The schemas reject a misspelt field deep in a pod template."""
    deployment = json.loads(json.dumps(component(defaults, "Deployment", "api")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# ---------------------------------------------------------------------------
# Worker pools: one Deployment per vantage
# ---------------------------------------------------------------------------


def test_one_worker_deployment_per_vantage(
    external: list[dict[str, Any]], external_values: dict[str, Any]
) -> None:
    workers = component(external, "Deployment", "worker")
    vantages = external_values["vantages"]
    assert len(workers) == len(vantages) == 3
    by_vantage = {doc["metadata"]["labels"]["smtpcheck/vantage"]: doc for doc in workers}
    assert set(by_vantage) == {vantage["name"] for vantage in vantages}
    defaults = external_values["workerDefaults"]
    for vantage in vantages:
        name = vantage["name"]
        deployment = by_vantage[name]
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = env_of(container)
        assert env["SMTPCHECK_VANTAGE"] == name
        processes = vantage.get("processes", defaults["processes"])
        assert container["args"][:5] == ["worker", "--vantage", name, "--processes", str(processes)]
        assert deployment["spec"]["replicas"] == vantage.get("replicas", 1)
        assert spec["nodeSelector"] == vantage["nodeSelector"]
        assert spec.get("tolerations", []) == vantage.get("tolerations", [])
        assert "SMTPCHECK_API_KEYS" not in env, "workers do not need the API keys"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert deployment["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/scrape"
        ] == ("false")
    # names are DNS labels even when the vantage name is not
    assert by_vantage["us_east.1"]["metadata"]["name"] == f"{RELEASE}-worker-us-east-1"
    assert by_vantage["Office"]["metadata"]["name"] == f"{RELEASE}-worker-office"
    # per-vantage overrides merge over the defaults
    us = by_vantage["us_east.1"]["spec"]["template"]["spec"]["containers"][0]
    assert us["resources"]["limits"]["memory"] == "1Gi"
    assert us["resources"]["requests"]["cpu"] == "100m"
    assert by_vantage["us_east.1"]["metadata"]["annotations"] == {"team": "mail"}
    eu = env_of(by_vantage["eu-west"]["spec"]["template"]["spec"]["containers"][0])
    assert eu["SMTPCHECK_HELO_NAME"] == "checker-eu.example.com"


def test_workers_have_no_http_probe(
    defaults: list[dict[str, Any]], external: list[dict[str, Any]]
) -> None:
    """Workers serve no HTTP: no probe unless a vantage sets one."""
    (worker,) = component(defaults, "Deployment", "worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert not {"livenessProbe", "readinessProbe", "startupProbe", "ports"} & set(container)
    office = named(external, "Deployment", f"{RELEASE}-worker-office")
    probe = office["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert probe["exec"]["command"][0] == "python"


def test_two_vantage_names_with_one_kubernetes_name_are_refused(render: Render) -> None:
    with pytest.raises(HelmFailure, match="share the Kubernetes name"):
        render({"vantages": [{"name": "a_b"}, {"name": "a.b"}]})


def test_worker_disruption_budgets(external: list[dict[str, Any]]) -> None:
    budgets = {doc["metadata"]["name"]: doc for doc in of_kind(external, "PodDisruptionBudget")}
    assert set(budgets) == {
        f"{RELEASE}-api",
        f"{RELEASE}-worker-eu-west",
        f"{RELEASE}-worker-office",  # us_east.1 turned its budget off
    }
    assert budgets[f"{RELEASE}-api"]["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in budgets[f"{RELEASE}-api"]["spec"]
    eu = budgets[f"{RELEASE}-worker-eu-west"]["spec"]
    assert eu["maxUnavailable"] == 1
    assert eu["selector"]["matchLabels"]["smtpcheck/vantage"] == "eu-west"


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------


def test_api_probes_and_command(defaults: list[dict[str, Any]]) -> None:
    (api,) = component(defaults, "Deployment", "api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "api"  # smtpcheck api: gunicorn --no-control-socket
    assert container["ports"] == [{"name": "http", "containerPort": 8025, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert env_of(container)["SMTPCHECK_BIND"] == "0.0.0.0:8025"
    service = named(defaults, "Service", f"{RELEASE}-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"].items() <= (
        api["spec"]["template"]["metadata"]["labels"].items()
    )
    assert api["spec"]["replicas"] == 2
    assert not of_kind(defaults, "Ingress")
    assert not of_kind(defaults, "HorizontalPodAutoscaler")


def test_ingress_and_autoscaler_when_enabled(external: list[dict[str, Any]]) -> None:
    (api,) = component(external, "Deployment", "api")
    assert "replicas" not in api["spec"], "the HPA owns the replica count"
    (hpa,) = of_kind(external, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    (ingress,) = of_kind(external, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{RELEASE}-api", "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [
        {"hosts": ["smtpcheck.example.com"], "secretName": "smtpcheck-tls"}
    ]


# ---------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda path: path.stem)
def test_pods_are_locked_down(render: Render, values_file: Path) -> None:
    docs = render(load_values(values_file))
    specs = list(pod_specs(docs))
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert "resources" in container, where
            if container["name"] == "redis":
                continue
            assert pod["runAsUser"] == sc["runAsUser"] == SMTPCHECK_UID, where
            if spec.get("restartPolicy") == "Never":  # the helm test pod writes nothing
                continue
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            volumes = {volume["name"]: volume for volume in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
    for account in of_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_no_secret_reaches_a_configmap_or_a_pod_spec(
    render: Render, external: list[dict[str, Any]]
) -> None:
    for docs in (
        render({}),
        external,
        render({"secret": {"apiKeys": [{"name": "a", "key": "k"}]}}),
    ):
        secrets = {value for value in secret_data(docs).values() if len(value) >= 8}
        secrets.add("s3cr3t-redis-password")
        for doc in docs:
            if doc["kind"] == "Secret":
                continue
            text = json.dumps(doc)
            leaked = [secret for secret in secrets if secret in text]
            assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} holds a secret"
        for configmap in of_kind(docs, "ConfigMap"):
            keys = set(configmap["data"])
            assert not keys & {"SMTPCHECK_SECRET_KEY", "SMTPCHECK_API_KEYS", "REDIS_URL"}
            assert not [key for key in keys if "PASSWORD" in key]


def test_a_secret_in_extra_env_is_refused(render: Render) -> None:
    with pytest.raises(HelmFailure):
        render({"config": {"extraEnv": {"SMTPCHECK_SECRET_KEY": "oops"}}})


def test_generated_secrets(defaults: list[dict[str, Any]]) -> None:
    data = secret_data(defaults)
    assert len(data["SMTPCHECK_SECRET_KEY"]) >= 32
    name, _, key = data["SMTPCHECK_API_KEYS"].partition(":")
    assert name == "admin" and len(key) >= 32
    password = data["REDIS_PASSWORD"]
    assert data["REDIS_URL"] == f"redis://:{password}@{RELEASE}-redis:6379/0"


def test_api_keys_from_values(render: Render) -> None:
    digest = "ab" * 32
    docs = render(
        {"secret": {"apiKeys": [{"name": "ci", "key": "k-123"}, {"name": "ops", "sha256": digest}]}}
    )
    assert secret_data(docs)["SMTPCHECK_API_KEYS"] == f"ci:k-123,ops:sha256:{digest}"


def test_pods_roll_when_what_they_read_changes(render: Render) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        return {
            doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for doc in of_kind(render(values), "Deployment")
        }

    before = checksums({"secret": {"apiKeys": [{"name": "a", "key": "one"}]}})
    keys_changed = checksums({"secret": {"apiKeys": [{"name": "a", "key": "two"}]}})
    config_changed = checksums(
        {"secret": {"apiKeys": [{"name": "a", "key": "one"}]}, "config": {"logLevel": "DEBUG"}}
    )
    api, worker = f"{RELEASE}-api", f"{RELEASE}-worker-default"
    assert keys_changed[api] != before[api]
    assert keys_changed[worker] == before[worker], "workers do not read the API keys"
    assert config_changed[api] != before[api] and config_changed[worker] != before[worker]


def test_existing_secret(external: list[dict[str, Any]]) -> None:
    (api,) = component(external, "Deployment", "api")
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert env["SMTPCHECK_SECRET_KEY"] == {
        "secretKeyRef": {"name": "smtpcheck-credentials", "key": "secret-key"}
    }
    assert env["SMTPCHECK_API_KEYS"] == {
        "secretKeyRef": {"name": "smtpcheck-credentials", "key": "api-keys"}
    }
    # The chart's own Secret holds only the Redis URL it was given.
    (secret,) = of_kind(external, "Secret")
    assert set(secret["data"]) == {"REDIS_URL"}


def test_auth_off_mounts_no_api_keys(render: Render) -> None:
    docs = render(load_values(CHART / "ci" / "minimal-values.yaml"))
    (api,) = component(docs, "Deployment", "api")
    assert "SMTPCHECK_API_KEYS" not in env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert "SMTPCHECK_API_KEYS" not in secret_data(docs)
    assert named(docs, "ConfigMap", "checks")["data"]["SMTPCHECK_AUTH"] == "off"


# ---------------------------------------------------------------------------
# NetworkPolicies
# ---------------------------------------------------------------------------


def test_workers_reach_only_dns_redis_and_smtp(
    defaults: list[dict[str, Any]], external: list[dict[str, Any]]
) -> None:
    smtp = {("TCP", port) for port in (25, 465, 587, 2525)}
    dns = {("UDP", DNS_PORT), ("TCP", DNS_PORT)}
    (policy,) = component(defaults, "NetworkPolicy", "worker")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert egress_ports(policy) == dns | {("TCP", REDIS_PORT)} | smtp
    redis_rule = next(rule for rule in policy["spec"]["egress"] if rule["ports"][0]["port"] == 6379)
    assert redis_rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "redis"
    )
    smtp_rule = policy["spec"]["egress"][-1]
    blocked = smtp_rule["to"][0]["ipBlock"]["except"]
    assert "10.0.0.0/8" in blocked and "192.168.0.0/16" in blocked

    policies = component(external, "NetworkPolicy", "worker")
    assert len(policies) == 3
    dns_5353 = dns | {("UDP", 5353), ("TCP", 5353)}  # config.dnsServers names 192.0.2.54:5353
    for policy in policies:
        assert egress_ports(policy) == dns_5353 | {("TCP", 6380)} | smtp
        cidrs = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["egress"][-1]["to"]]
        assert "198.51.100.0/24" in cidrs, "config.allowNetworks is let through"


def test_config_map_holds_the_settings(external: list[dict[str, Any]]) -> None:
    data = named(external, "ConfigMap", RELEASE)["data"]
    assert data["SMTPCHECK_HELO_NAME"] == "checker.example.com"
    assert data["SMTPCHECK_ALLOW_NETWORKS"] == "198.51.100.0/24"
    assert data["SMTPCHECK_DNS_SERVERS"] == "192.0.2.53,192.0.2.54:5353"
    assert data["SMTPCHECK_RATE_LIMIT"] == "30/minute;500/hour"
    assert data["SMTPCHECK_MAX_CONCURRENT_PER_KEY"] == "20"
    assert "SMTPCHECK_MAX_CONCURRENT_PER_TARGET" not in data
    assert data["TZ"] == "UTC"
    for deployment in of_kind(external, "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"configMapRef": {"name": RELEASE}} in container["envFrom"]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda path: path.stem)
def test_the_service_accepts_the_rendered_environment(render: Render, values_file: Path) -> None:
    """ConfigMap plus each container's literal env, read by the one config module."""
    docs = render(load_values(values_file))
    (configmap,) = of_kind(docs, "ConfigMap")
    for deployment in of_kind(docs, "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        literal = {item["name"]: item["value"] for item in container["env"] if "value" in item}
        settings = Settings.from_env({**configmap["data"], **literal})
        assert settings.allowed_ports
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "worker":
            assert settings.vantage == literal["SMTPCHECK_VANTAGE"]
        else:
            assert settings.bind == "0.0.0.0:8025"


def test_allowed_ports_drive_config_and_policy(render: Render) -> None:
    docs = render({"config": {"allowedPorts": [25, 587]}})
    assert named(docs, "ConfigMap", RELEASE)["data"]["SMTPCHECK_ALLOWED_PORTS"] == "25,587"
    (policy,) = component(docs, "NetworkPolicy", "worker")
    assert {port for _, port in egress_ports(policy)} == {DNS_PORT, REDIS_PORT, 25, 587}


def test_api_reaches_only_dns_and_redis(
    defaults: list[dict[str, Any]], external: list[dict[str, Any]]
) -> None:
    dns = {("UDP", DNS_PORT), ("TCP", DNS_PORT)}
    (policy,) = component(defaults, "NetworkPolicy", "api")
    assert egress_ports(policy) == dns | {("TCP", REDIS_PORT)}
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": "http"}]}]
    (policy,) = component(external, "NetworkPolicy", "api")
    assert egress_ports(policy) == dns | {("UDP", 5353), ("TCP", 5353), ("TCP", 6380)}
    redis_rule = policy["spec"]["egress"][1]
    assert redis_rule["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]


def test_bundled_redis_admits_only_this_release(defaults: list[dict[str, Any]]) -> None:
    (policy,) = component(defaults, "NetworkPolicy", "redis")
    assert policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    sources = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]
    }
    assert sources == {"api", "worker"}
    assert all(
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == RELEASE
        for peer in rule["from"]
    )


# ---------------------------------------------------------------------------
# Redis: bundled only without an external URL
# ---------------------------------------------------------------------------


def test_bundled_redis_by_default(defaults: list[dict[str, Any]]) -> None:
    (statefulset,) = of_kind(defaults, "StatefulSet")
    assert statefulset["metadata"]["name"] == f"{RELEASE}-redis"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    headless = named(defaults, "Service", f"{RELEASE}-redis-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
    named(defaults, "Service", f"{RELEASE}-redis")
    for deployment in of_kind(defaults, "Deployment"):
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": RELEASE, "key": "REDIS_URL"}}


def test_no_bundled_redis_with_an_external_url(external: list[dict[str, Any]]) -> None:
    assert not of_kind(external, "StatefulSet")
    assert not [doc for doc in of_kind(external, "Service") if "redis" in doc["metadata"]["name"]]
    assert not component(external, "NetworkPolicy", "redis")
    assert secret_data(external)["REDIS_URL"].startswith("rediss://")


def test_no_bundled_redis_with_a_url_from_an_existing_secret(render: Render) -> None:
    docs = render(
        {
            "redis": {"existingSecret": "redis-conn", "existingSecretKey": "url"},
            "secret": {"existingSecret": "app-secrets"},
        }
    )
    assert not of_kind(docs, "StatefulSet")
    assert not of_kind(docs, "Secret"), "every secret comes from existing Secrets"
    for deployment in of_kind(docs, "Deployment"):
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "redis-conn", "key": "url"}}


def test_bundled_redis_without_persistence(render: Render) -> None:
    docs = render(load_values(CHART / "ci" / "minimal-values.yaml"))
    (statefulset,) = of_kind(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in statefulset["spec"]
    volumes = statefulset["spec"]["template"]["spec"]["volumes"]
    assert volumes == [{"name": "data", "emptyDir": {}}]
    assert not of_kind(docs, "NetworkPolicy")


def test_no_redis_at_all_is_refused(render: Render) -> None:
    with pytest.raises(HelmFailure, match="redis"):
        render({"redis": {"bundled": {"enabled": False}}})


# ---------------------------------------------------------------------------
# Redis Sentinel and TLS files (ci/sentinel-values.yaml)
# ---------------------------------------------------------------------------

TLS_DIR = "/etc/smtpcheck/redis-tls"


@pytest.fixture(scope="module")
def sentinel(render: Render) -> list[dict[str, Any]]:
    return render(load_values(CHART / "ci" / "sentinel-values.yaml"))


def test_sentinel_values_make_a_sentinel_url(sentinel: list[dict[str, Any]]) -> None:
    url = secret_data(sentinel)["REDIS_URL"]
    assert url == (
        "rediss+sentinel://:sentinel-and-data-password@"
        "sentinel-0.redis.svc.cluster.local:26379,sentinel-1.redis.svc.cluster.local:26379,"
        "sentinel-2.redis.svc.cluster.local:26379/smtpcheck/1"
    )
    assert not of_kind(sentinel, "StatefulSet"), "no bundled Redis beside Sentinel"
    (configmap,) = of_kind(sentinel, "ConfigMap")
    settings = Settings.from_env({**configmap["data"], "REDIS_URL": url})
    assert settings.redis_ca_file == f"{TLS_DIR}/ca.crt"
    assert settings.redis_cert_file == f"{TLS_DIR}/tls.crt"
    assert settings.redis_key_file == f"{TLS_DIR}/tls.key"


def test_every_pod_mounts_the_redis_tls_secret(sentinel: list[dict[str, Any]]) -> None:
    deployments = of_kind(sentinel, "Deployment")
    assert len(deployments) == 3  # the API and one per vantage
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        volume = {"secretName": "redis-client-tls", "defaultMode": 0o440}
        assert {"name": "redis-tls", "secret": volume} in spec["volumes"]
        (container,) = spec["containers"]
        mount = {"name": "redis-tls", "mountPath": TLS_DIR, "readOnly": True}
        assert mount in container["volumeMounts"]


def test_pods_reach_the_sentinels_and_the_data_nodes(sentinel: list[dict[str, Any]]) -> None:
    for name in ("api", "worker"):
        for policy in component(sentinel, "NetworkPolicy", name):
            ports = {port for proto, port in egress_ports(policy) if proto == "TCP"}
            assert {26379, 6380} <= ports, (name, ports)
            assert REDIS_PORT not in ports


def test_each_vantage_keeps_its_own_placement(sentinel: list[dict[str, Any]]) -> None:
    pods = {
        d["metadata"]["name"].removeprefix(f"{RELEASE}-worker-"): d["spec"]["template"]["spec"]
        for d in component(sentinel, "Deployment", "worker")
    }
    assert pods["datacenter"]["nodeSelector"] == {"smtpcheck/network": "datacenter"}
    assert "podAntiAffinity" in pods["datacenter"]["affinity"]
    assert "tolerations" not in pods["datacenter"]
    assert pods["residential-isp"]["nodeSelector"] == {"smtpcheck/network": "residential"}
    assert pods["residential-isp"]["tolerations"][0]["value"] == "residential"


def test_a_sentinel_url_given_whole_is_accepted(render: Render) -> None:
    url = "redis+sentinel://s1:26379,s2:26379/main/0"
    docs = render({"redis": {"url": url}})
    assert secret_data(docs)["REDIS_URL"] == url
    with pytest.raises(HelmFailure, match="sentinel"):
        render({"redis": {"sentinel": {"hosts": ["s1:26379"], "service": "bad name"}}})


def test_the_forking_worker_is_refused_with_sentinel(render: Render) -> None:
    with pytest.raises(HelmFailure, match="workerClass fork cannot follow a Sentinel primary"):
        render(
            {
                "redis": {"sentinel": {"hosts": ["s1:26379"]}},
                "vantages": [{"name": "default", "workerClass": "fork"}],
            }
        )
