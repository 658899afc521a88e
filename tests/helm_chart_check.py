#!/usr/bin/env python3
"""The gofe Helm chart through real Helm, offline.

Helm is PyPI's helm-python-sdk (Helm v4's Go SDK behind a C ABI, no helm binary); manifests
are checked with PyPI's kubernetes-validate (the Kubernetes OpenAPI schemas it bundles, strict:
unknown fields fail). Run by tests/chart.rs (`cargo test --test chart`); run alone with
`python3 tests/helm_chart_check.py`. Exit status 0 only when every check passed; each failure
is printed with what was rendered.

Checks:
- `helm lint --strict` with the defaults and every value set below, for the oldest and newest
  Kubernetes the chart claims (Chart.yaml kubeVersion) that kubernetes-validate has schemas for;
- `helm template` of each value set; every object validated against both versions' schemas
  (the CRD under crds/ too); kinds Kubernetes has no schema for (prometheus-operator's
  ServiceMonitor/PodMonitor, cert-manager's Certificate/Issuer) are checked here instead
  against the objects they point at (ports, Secrets, Issuers);
- what each value set must produce (mutual TLS from the mesh CA by default: its root in a
  kept Secret, TokenReview RBAC, the proxies' projected token and root-only mount; the
  front-proxy CA read at run time by default, a
  user-given CA overriding it, the APIService's caBundle matching the serving Secret, the
  cainjector annotation with cert-manager, scrape annotations on every metrics port; with
  injection on, the MutatingWebhookConfiguration's selectors, Service, path, caBundle and
  policy, and the controller's webhook section, mounted Secret and port; every rendered
  controller file accepted by `gofe check` when GOFE_BIN is set);
- wrong values (replicas -1, port 70000, a typo'd key, a bad duration, mTLS or traffic
  capture, which gofe cannot do yet) refused by values.schema.json with a message naming
  the key.

Not checked, because no cluster runs here: `lookup` (offline rendering returns nothing, so the
kept-Secret branch is not rendered; the fresh-generation branch is), admission, and
installation itself.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(
        f"missing Python package: {e}. Install: python3 -m pip install "
        "helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 (.ci/run does)"
    )
    sys.exit(2)

CHART = Path(__file__).resolve().parent.parent / "charts" / "gofe"
RELEASE, NAMESPACE = "gofe", "gofe-system"
FULL = "gofe"  # the release name contains the chart name
# Chart.yaml says kubeVersion >=1.26; kubernetes-validate 1.37.0 knows up to 1.37.
KUBE_VERSIONS = ["1.26.0", "1.37.0"]
# Kinds without a Kubernetes schema, checked by check_custom_kinds instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}

# PEM-shaped text: the chart only passes it through (the adapter parses it at start).
FRONT_PROXY_CA = """-----BEGIN CERTIFICATE-----
MIIBeTCCAR+gAwIBAgIUW6y1e7s7Qw0Zc4v0ZQ0rYp7bH9QwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHZnJvbnQtY2EwHhcNMjQwMTAxMDAwMDAwWhcNMzQwMTAxMDAw
MDAwWjASMRAwDgYDVQQDDAdmcm9udC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABPbQ0lXQ==
-----END CERTIFICATE-----
"""

VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "adapter off": {"adapter": {"enabled": False}},
    "proxy off, one namespace": {"proxy": {"enabled": False}, "controller": {"watchNamespace": "shop"}},
    "monitoring and dashboard on": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "podMonitor": {"enabled": True, "interval": "15s"},
        },
        "dashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "gofe"}},
    },
    "cert-manager on": {"adapter": {"certManager": {"enabled": True}}, "metrics": {"podMonitor": {"enabled": True}}},
    "cert-manager with a ClusterIssuer": {
        "adapter": {"certManager": {"enabled": True, "issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}}}
    },
    "user-given front-proxy CA": {
        "adapter": {"requestheader": {"clientCA": FRONT_PROXY_CA, "allowedNames": "front-proxy-client"}}
    },
    "user-given serving Secret": {
        "adapter": {"tls": {"secretName": "my-adapter-tls", "caBundle": base64.b64encode(b"pem").decode()}}
    },
    "injection on": {"injection": {"enabled": True}},
    "injection with cert-manager, legacy sidecar, Fail": {
        "injection": {"enabled": True, "failurePolicy": "Fail", "timeoutSeconds": 5, "nativeSidecar": False,
                      "proxy": {"memoryLimit": "256Mi"}, "certManager": {"enabled": True}},
    },
    "xDS over TLS from a Secret": {
        "controller": {"identity": {"enabled": False}, "xds": {"tls": {"secretName": "gofe-xds-tls"}}}
    },
    "xDS mutual TLS, proxies brought by the user": {
        "controller": {"identity": {"enabled": False}, "xds": {"tls": {"secretName": "gofe-xds-tls", "mutual": True}}},
        "proxy": {"enabled": False},
    },
    "mesh CA off: plaintext xDS": {"controller": {"identity": {"enabled": False}}},
    "mesh CA with a root of one's own, short certificates": {
        "controller": {"identity": {"rootSecretName": "my-mesh-root", "trustDomain": "mesh.example", "workloadTtl": "1h"}}
    },
    "all three metrics APIs": {"adapter": {"apis": {"external": True, "custom": True, "resource": True}}},
    "external metrics only, CA given": {
        "adapter": {"apis": {"custom": False}, "requestheader": {"clientCA": FRONT_PROXY_CA}}
    },
    "custom metrics only": {"adapter": {"apis": {"external": False, "custom": True, "resource": False}}},
    "custom metrics on a CRD": {"adapter": {"objectRules": [{"apiGroups": ["example.com"], "resources": ["widgets"]}]}},
    "annotations off, one controller": {
        "metrics": {"annotations": False},
        "controller": {"replicas": 1, "leaderElection": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
    },
}

# (values, what the error must mention)
BAD_VALUES: list[tuple[str, dict, list[str]]] = [
    ("replicas -1", {"proxy": {"replicas": -1}}, ["/proxy/replicas", "minimum"]),
    ("controller replicas 0", {"controller": {"replicas": 0}}, ["/controller/replicas", "minimum"]),
    (
        "port 70000",
        {"proxy": {"service": {"ports": [{"name": "http", "port": 70000, "targetPort": 8080}]}}},
        ["/proxy/service/ports/0/port", "maximum"],
    ),
    ("typo'd top-level key", {"adpater": {"enabled": False}}, ["adpater", "not allowed"]),
    ("typo'd nested key", {"controller": {"replica": 3}}, ["/controller", "replica"]),
    ("duration without a unit", {"proxy": {"drainTimeout": "15"}}, ["/proxy/drainTimeout"]),
    ("duration as a number", {"controller": {"leaderElection": {"leaseDuration": 15}}}, ["/controller/leaderElection/leaseDuration"]),
    ("log format", {"logFormat": "xml"}, ["/logFormat"]),
    ("mTLS (not supported yet)", {"controller": {"mtls": {"enabled": True}}}, ["/controller", "mtls"]),
    ("sidecar injection under the proxy", {"proxy": {"sidecarInjection": {"enabled": True}}}, ["/proxy", "sidecarInjection"]),
    ("traffic capture (not supported yet)", {"injection": {"capture": True}}, ["/injection", "capture"]),
    ("injection failurePolicy", {"injection": {"failurePolicy": "Sometimes"}}, ["/injection/failurePolicy"]),
    ("injection timeout 60", {"injection": {"timeoutSeconds": 60}}, ["/injection/timeoutSeconds", "maximum"]),
    ("injected proxy memory", {"injection": {"proxy": {"memory": "lots"}}}, ["/injection/proxy/memory"]),
    ("a metrics API that does not exist", {"adapter": {"apis": {"pods": True}}}, ["/adapter/apis", "pods"]),
    ("a metrics API switch as a string", {"adapter": {"apis": {"custom": "yes"}}}, ["/adapter/apis/custom"]),
    ("ejection percent 150", {"controller": {"policy": {"max_ejection_percent": 150}}}, ["max_ejection_percent", "maximum"]),
]

failures: list[str] = []
passed = 0


def check(ok: bool, what: str, detail: str = "") -> None:
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what + (f"\n    {detail}" if detail else ""))


def render(chart: "helm.Chart", values: dict) -> list[dict]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template"] = path
                objects.append(doc)
    return objects


def find(objects: list[dict], kind: str, name: str) -> dict | None:
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    return None


def strip(o: dict) -> dict:
    return {k: v for k, v in o.items() if k != "__template"}


def validate(label: str, objects: list[dict]) -> None:
    for o in objects:
        where = f"{label}: {o['__template']} {o['kind']}/{o['metadata']['name']}"
        if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(o), version, strict=True)
                check(True, where)
            except SchemaNotFoundError as e:
                check(False, f"{where}: no Kubernetes {version} schema", e.message)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                check(False, f"{where}: invalid for Kubernetes {version} at {path}", e.message)


def containers(objects: list[dict], component: str) -> list[dict]:
    d = find(objects, "Deployment", f"{FULL}-{component}")
    return d["spec"]["template"]["spec"]["containers"] if d else []


def check_custom_kinds(label: str, objects: list[dict]) -> None:
    """ServiceMonitor/PodMonitor ports exist on what they select; Certificates name the
    adapter's Secret and an Issuer that is rendered or given."""
    for sm in [o for o in objects if o["kind"] == "ServiceMonitor"]:
        selector = sm["spec"]["selector"]["matchLabels"]
        services = [
            o for o in objects
            if o["kind"] == "Service"
            and all(o["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
        ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            check(ep["port"] in ports, f"{label}: ServiceMonitor port {ep['port']} is on a selected Service", str(ports))
        check({"http-admin", "grpc-xds"} <= {e["port"] for e in sm["spec"]["endpoints"]},
              f"{label}: ServiceMonitor scrapes admin and xDS ports")
    for pm in [o for o in objects if o["kind"] == "PodMonitor"]:
        ports = set()
        for comp in ("controller", "proxy", "adapter"):
            for c in containers(objects, comp):
                ports |= {p["name"] for p in c.get("ports", [])}
        for ep in pm["spec"]["podMetricsEndpoints"]:
            check(ep["port"] in ports, f"{label}: PodMonitor port {ep['port']} is a container port", str(ports))
    for cert in [o for o in objects if o["kind"] == "Certificate" and o["metadata"]["name"] == f"{FULL}-adapter"]:
        d = find(objects, "Deployment", f"{FULL}-adapter")
        secrets = [v["secret"]["secretName"] for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        check(cert["spec"]["secretName"] in secrets, f"{label}: Certificate's Secret is the adapter's", str(secrets))
        ref = cert["spec"]["issuerRef"]
        if ref["kind"] == "Issuer":
            check(find(objects, "Issuer", ref["name"]) is not None, f"{label}: the Certificate's Issuer is rendered")
        check(f"{FULL}-adapter.{NAMESPACE}.svc" in cert["spec"]["dnsNames"], f"{label}: Certificate covers the Service")


def annotations_of_pods(objects: list[dict], component: str) -> dict:
    d = find(objects, "Deployment", f"{FULL}-{component}")
    return d["spec"]["template"]["metadata"].get("annotations", {}) if d else {}


def check_semantics(label: str, values: dict, objects: list[dict]) -> None:
    adapter = values.get("adapter", {})
    apis = {"external": True, "custom": True, "resource": False, **adapter.get("apis", {})}
    if adapter.get("enabled", True):
        args = containers(objects, "adapter")[0]["args"]
        pod = find(objects, "Deployment", f"{FULL}-adapter")["spec"]["template"]["spec"]
        role = find(objects, "Role", f"{FULL}-adapter-auth-reader")
        user_ca = adapter.get("requestheader", {}).get("clientCA")
        if user_ca:
            check(any(a.startswith("--requestheader-client-ca-file=") for a in args), f"{label}: a given CA is passed as a file")
            cm = find(objects, "ConfigMap", f"{FULL}-adapter")
            check(cm is not None and cm["data"]["requestheader-client-ca.crt"].strip() == user_ca.strip(),
                  f"{label}: the ConfigMap holds the given CA")
            check(role is None, f"{label}: no kube-system Role when the CA is given")
            lists = apis["custom"] or apis["resource"]
            check(pod.get("automountServiceAccountToken") is lists,
                  f"{label}: a token only when objects are listed (custom/resource metrics)")
        else:
            check(not any("client-ca-file" in a for a in args) and "--requestheader-configmap=kube-system/extension-apiserver-authentication" in args, f"{label}: the CA is read at run time", str(args))
            check(pod.get("automountServiceAccountToken") is True, f"{label}: the token is mounted for the watch")
            check(role is not None and role["metadata"]["namespace"] == "kube-system"
                  and role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                         "resourceNames": ["extension-apiserver-authentication"],
                                         "verbs": ["list", "watch"]}],
                  f"{label}: a Role in kube-system for list/watch of that one ConfigMap", json.dumps(role))
            binding = find(objects, "RoleBinding", f"{FULL}-adapter-auth-reader")
            check(binding is not None and binding["subjects"][0]["name"] == f"{FULL}-adapter",
                  f"{label}: the Role is bound to the adapter")
        registered = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "APIService")
        want = sorted(
            (["v1beta1.external.metrics.k8s.io"] if apis["external"] else [])
            + (["v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"] if apis["custom"] else [])
            + (["v1beta1.metrics.k8s.io"] if apis["resource"] else [])
        )
        check(registered == want, f"{label}: the APIServices of the enabled APIs", str(registered))
        for o in objects:
            if o["kind"] == "APIService":
                check(o["spec"]["service"]["name"] == f"{FULL}-adapter" and o["spec"]["group"] in o["metadata"]["name"],
                      f"{label}: {o['metadata']['name']} goes to the adapter")
        if apis["custom"]:
            v2 = find(objects, "APIService", "v1beta2.custom.metrics.k8s.io")
            v1 = find(objects, "APIService", "v1beta1.custom.metrics.k8s.io")
            check(v2["spec"]["versionPriority"] > v1["spec"]["versionPriority"], f"{label}: v1beta2 is preferred")
        reader = find(objects, "ClusterRole", f"{FULL}-adapter-objects")
        if apis["custom"] or apis["resource"]:
            extra = [{**rule, "verbs": ["get", "list"]} for rule in adapter.get("objectRules", [])]
            check(reader is not None and reader["rules"] == [{"apiGroups": [""], "resources": ["pods", "nodes", "namespaces"], "verbs": ["get", "list"]}] + extra,
                  f"{label}: get/list on the objects metrics are asked for", json.dumps(reader))
            binding = find(objects, "ClusterRoleBinding", f"{FULL}-adapter-objects")
            check(binding is not None and binding["subjects"][0]["name"] == f"{FULL}-adapter", f"{label}: bound to the adapter")
        else:
            check(reader is None, f"{label}: no object access for external metrics only")
        api = find(objects, "APIService", registered[0]) if registered else None
        cm_enabled = adapter.get("certManager", {}).get("enabled")
        if cm_enabled:
            check(api["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from") == f"{NAMESPACE}/{FULL}-adapter",
                  f"{label}: cainjector fills the caBundle")
            check("caBundle" not in api["spec"], f"{label}: no caBundle of the chart's own with cert-manager")
            check(find(objects, "Secret", f"{FULL}-adapter-tls") is None, f"{label}: no generated Secret with cert-manager")
        elif adapter.get("tls", {}).get("secretName"):
            check(api["spec"]["caBundle"] == adapter["tls"]["caBundle"], f"{label}: the given caBundle")
            check(not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] != f"{FULL}-mesh-ca"],
                  f"{label}: no generated Secret (but the mesh CA's root)")
        else:
            secret = find(objects, "Secret", f"{FULL}-adapter-tls")
            check(secret is not None and secret["data"]["ca.crt"] == api["spec"]["caBundle"],
                  f"{label}: the generated Secret keeps the CA that the APIService trusts")
            check("gofe.io/revision" not in annotations_of_pods(objects, "adapter"),
                  f"{label}: the adapter does not roll with every revision")
    if values.get("metrics", {}).get("annotations", True):
        want = {"controller": "9902", "adapter": "6443"}
        if values.get("proxy", {}).get("enabled", True):
            want["proxy"] = "9901"
        if not adapter.get("enabled", True):
            del want["adapter"]
        for comp, port in want.items():
            a = annotations_of_pods(objects, comp)
            check(a.get("prometheus.io/scrape") == "true" and a.get("prometheus.io/port") == port,
                  f"{label}: {comp} pods are annotated for scraping on {port}", str(a))
        svc = find(objects, "Service", f"{FULL}-controller")["metadata"].get("annotations", {})
        check(svc.get("prometheus.io/port") == "18000", f"{label}: the xDS server's metrics port is annotated", str(svc))
    if values.get("dashboard", {}).get("enabled"):
        cm = find(objects, "ConfigMap", f"{FULL}-dashboard")
        check(cm is not None and cm["metadata"]["labels"].get("grafana_dashboard") == "1",
              f"{label}: the dashboard ConfigMap is labelled for Grafana's sidecar")
        dash = json.loads(cm["data"]["gofe.json"])
        check(dash.get("uid") == "gofe-overview" and len(dash["panels"]) > 10, f"{label}: the dashboard JSON is shipped whole")


def check_injection(label: str, values: dict, objects: list[dict]) -> None:
    """The webhook: registered with the Service port, path and a caBundle the serving Secret
    holds (or cainjector's annotation), selecting by label, the controller serving it."""
    injection = values.get("injection", {})
    mwc = find(objects, "MutatingWebhookConfiguration", f"{FULL}-injector")
    if not injection.get("enabled"):
        check(mwc is None, f"{label}: no webhook unless injection.enabled")
        return
    check(mwc is not None and len(mwc["webhooks"]) == 2, f"{label}: two injection webhooks")
    if mwc is None:
        return
    svc = find(objects, "Service", f"{FULL}-controller")
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    check(443 in ports and ports[443]["targetPort"] == "webhook", f"{label}: the controller Service has the webhook port", str(ports))
    pod = find(objects, "Deployment", f"{FULL}-controller")["spec"]["template"]["spec"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    check(container_ports.get("webhook") == 9443, f"{label}: the controller listens on 9443", str(container_ports))
    cm = find(objects, "ConfigMap", f"{FULL}-controller")
    config = yaml.safe_load(cm["data"]["controller.yaml"])
    hook = config.get("webhook", {})
    check(hook.get("address") == "0.0.0.0:9443" and hook.get("failure_policy") == injection.get("failurePolicy", "Ignore"),
          f"{label}: the controller file has the webhook section", json.dumps(hook))
    check(hook.get("sidecar", {}).get("xds_address") == f"{FULL}-controller.{NAMESPACE}.svc:18000",
          f"{label}: injected proxies are bootstrapped to the controller Service", json.dumps(hook))
    check(hook.get("sidecar", {}).get("native_sidecar") == injection.get("nativeSidecar", True), f"{label}: nativeSidecar is passed")
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    check(hook.get("cert_file", "").startswith("/var/run/gofe-webhook/") and secrets.get(mounts.get("/var/run/gofe-webhook")) == f"{FULL}-injector-tls",
          f"{label}: the serving Secret is mounted where the webhook reads it", f"{mounts} {secrets}")
    for w in mwc["webhooks"]:
        cc = w["clientConfig"]
        check(cc["service"] == {"name": f"{FULL}-controller", "namespace": NAMESPACE, "path": "/inject", "port": 443},
              f"{label}: {w['name']} calls the controller's /inject", json.dumps(cc))
        check(w["failurePolicy"] == injection.get("failurePolicy", "Ignore") and w["timeoutSeconds"] == injection.get("timeoutSeconds", 10),
              f"{label}: {w['name']} failurePolicy and timeout from values")
        check(w["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
              f"{label}: {w['name']} sees Pod creations only")
        excluded = [e for e in w["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"]
        check(excluded and NAMESPACE in excluded[0]["values"], f"{label}: {w['name']} never injects the release namespace")
        if injection.get("certManager", {}).get("enabled"):
            check("caBundle" not in cc, f"{label}: no caBundle of the chart's own with cert-manager")
        else:
            secret = find(objects, "Secret", f"{FULL}-injector-tls")
            check(secret is not None and cc.get("caBundle") == secret["data"]["ca.crt"], f"{label}: {w['name']} trusts the Secret's CA")
    by_name = {w["name"]: w for w in mwc["webhooks"]}
    ns = by_name["namespace.inject.gofe.io"]
    check({"key": "gofe.io/inject", "operator": "In", "values": ["enabled"]} in ns["namespaceSelector"]["matchExpressions"]
          and ns["objectSelector"]["matchExpressions"] == [{"key": "gofe.io/inject", "operator": "NotIn", "values": ["disabled"]}],
          f"{label}: opt-in by namespace label, Pods labelled disabled excluded")
    obj = by_name["object.inject.gofe.io"]
    check(obj["objectSelector"]["matchExpressions"] == [{"key": "gofe.io/inject", "operator": "In", "values": ["enabled"]}],
          f"{label}: opt-in by Pod label")
    if injection.get("certManager", {}).get("enabled"):
        check(mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from") == f"{NAMESPACE}/{FULL}-injector",
              f"{label}: cainjector fills the webhook's caBundle")
        cert = find(objects, "Certificate", f"{FULL}-injector")
        check(cert is not None and cert["spec"]["secretName"] == f"{FULL}-injector-tls"
              and f"{FULL}-controller.{NAMESPACE}.svc" in cert["spec"]["dnsNames"], f"{label}: the webhook Certificate covers the Service")
        ref = cert["spec"]["issuerRef"] if cert else {}
        check(ref.get("kind") != "Issuer" or find(objects, "Issuer", ref.get("name")) is not None, f"{label}: the webhook Certificate's Issuer is rendered")


def check_mesh_ca(label: str, values: dict, objects: list[dict]) -> None:
    """The mesh CA (on by default): the controller's file has identity with TokenReview and
    the root mounted from the kept Secret; the proxies' bootstrap asks it over TLS with a
    projected token, trusting the root alone; xDS is mutual TLS. Off: none of it."""
    identity = {"enabled": True, "trustDomain": "cluster.local", "workloadTtl": "24h", "rootSecretName": "",
                **values.get("controller", {}).get("identity", {})}
    proxies = values.get("proxy", {}).get("enabled", True)
    cm = find(objects, "ConfigMap", f"{FULL}-controller")
    config = yaml.safe_load(cm["data"]["controller.yaml"])
    generated = find(objects, "Secret", f"{FULL}-mesh-ca")
    reviewer = find(objects, "ClusterRole", f"{FULL}-controller-tokenreview")
    if not identity["enabled"]:
        check("identity" not in config, f"{label}: no mesh CA in the controller file")
        check(generated is None and reviewer is None, f"{label}: no mesh CA Secret or TokenReview role")
        return
    secret = identity["rootSecretName"] or f"{FULL}-mesh-ca"
    want = {"trust_domain": identity["trustDomain"], "workload_ttl": identity["workloadTtl"], "token_review": True,
            "token_audiences": ["gofe"],
            "root": {"cert_file": "/var/run/gofe-mesh-ca/tls.crt", "key_file": "/var/run/gofe-mesh-ca/tls.key"}}
    got = {k: config.get("identity", {}).get(k) for k in want}
    check(got == want, f"{label}: the controller file runs the mesh CA with TokenReview", json.dumps(got))
    names = config["identity"].get("server_names", [])
    check(f"{FULL}-controller.{NAMESPACE}.svc" in names, f"{label}: the xDS certificate names the Service", str(names))
    check("tls" not in config.get("xds", {}), f"{label}: no xds.tls beside the mesh CA")
    if identity["rootSecretName"]:
        check(generated is None, f"{label}: no generated root beside a given one")
    else:
        check(generated is not None and generated["type"] == "kubernetes.io/tls"
              and {"tls.crt", "tls.key"} <= set(generated.get("data", {}))
              and generated["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
              f"{label}: a generated root in a kept kubernetes.io/tls Secret")
        if generated:
            crt = base64.b64decode(generated["data"]["tls.crt"]).decode()
            check("BEGIN CERTIFICATE" in crt, f"{label}: the generated root is a PEM certificate")
    check(reviewer is not None and reviewer["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}],
          f"{label}: the controller may create TokenReviews, nothing more", json.dumps(reviewer))
    binding = find(objects, "ClusterRoleBinding", f"{FULL}-controller-tokenreview")
    check(binding is not None and binding["subjects"][0]["name"] == f"{FULL}-controller", f"{label}: bound cluster-wide to the controller")
    pod = find(objects, "Deployment", f"{FULL}-controller")["spec"]["template"]["spec"]
    mounted = [v for v in pod["volumes"] if v["name"] == "mesh-ca"]
    check(len(mounted) == 1 and mounted[0]["secret"]["secretName"] == secret, f"{label}: the controller mounts the root Secret")
    if not proxies:
        return
    cm = find(objects, "ConfigMap", f"{FULL}-proxy")
    bootstrap = yaml.safe_load(cm["data"]["bootstrap.yaml"])
    check(bootstrap["xds_server"].get("tls", {}).get("ca") == "/var/run/gofe-mesh-ca/ca.crt"
          and bootstrap.get("identity", {}).get("token_file") == "/var/run/secrets/gofe/token",
          f"{label}: mutual TLS by default: the proxies ask the mesh CA and verify the controller with its root", json.dumps(bootstrap))
    pod = find(objects, "Deployment", f"{FULL}-proxy")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    root = volumes.get("mesh-ca", {}).get("secret", {})
    check(root.get("secretName") == secret and root.get("items") == [{"key": "tls.crt", "path": "ca.crt"}],
          f"{label}: the proxies mount the root certificate alone, never its key", json.dumps(root))
    sources = volumes.get("identity-token", {}).get("projected", {}).get("sources", [])
    check(sources == [{"serviceAccountToken": {"audience": "gofe", "expirationSeconds": 3600, "path": "token"}}],
          f"{label}: a projected token for audience gofe", json.dumps(sources))
    args = pod["containers"][0]["args"]
    check(any(a.startswith("--service-node=sidecar~$(POD_IP)~$(POD_NAME).$(POD_NAMESPACE)~$(POD_NAMESPACE).svc") for a in args),
          f"{label}: an Istio-shaped node id, which the certificate of the pod's namespace may claim", str(args))


def check_controller_file(label: str, objects: list[dict]) -> None:
    """The controller file the chart renders (with its proxy file) is one `gofe check` accepts
    (only when GOFE_BIN names the binary, as tests/chart.rs does)."""
    gofe = os.environ.get("GOFE_BIN")
    if not gofe:
        return
    cm = find(objects, "ConfigMap", f"{FULL}-controller")
    with tempfile.TemporaryDirectory() as d:
        for name in ("controller.yaml", "proxy.yaml"):
            Path(d, name).write_text(cm["data"][name])
        run = subprocess.run([gofe, "check", "--kind", "controller", str(Path(d, "controller.yaml"))],
                             capture_output=True, text=True)
        check(run.returncode == 0, f"{label}: gofe check accepts the rendered controller.yaml", run.stdout + run.stderr)


def check_documented() -> None:
    """Every key of values.schema.json has a row in the README's values table, and the schema
    closes every object it describes (additionalProperties: false)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()

    def walk(prefix: str, sch: dict) -> None:
        props = sch.get("properties")
        if props is None:
            check(f"| `{prefix}` |" in readme, f"README documents {prefix}")
            return
        check(sch.get("additionalProperties") is False, f"schema closes {prefix or '(top)'}")
        documented_whole = f"| `{prefix}` |" in readme
        for key, sub in props.items():
            if key == "global":
                continue
            if documented_whole:
                continue
            walk(f"{prefix}.{key}" if prefix else key, sub)

    walk("", schema)


def main() -> int:
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}")
    chart = helm.Chart.load(CHART)
    try:
        check_documented()
        # crds/ are not templates: validate them too.
        crds = [dict(yaml.safe_load(c["data"]), __template=c["filename"]) for c in chart.crds]
        check(len(crds) == 1, "one CRD under crds/")
        validate("crds", crds)
        for label, values in VALUE_SETS.items():
            for version in KUBE_VERSIONS:
                report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{version}")
                problems = [m for m in report["messages"] if m["severity"] >= 2]
                check(not problems and not report["errors"], f"{label}: helm lint --strict (Kubernetes {version})",
                      json.dumps(problems or report["errors"], indent=1))
            try:
                objects = render(chart, values)
            except helm.HelmError as e:
                check(False, f"{label}: helm template", str(e))
                continue
            kinds = sorted({o["kind"] for o in objects})
            print(f"  {label}: {len(objects)} objects ({', '.join(kinds)})")
            validate(label, objects)
            check_custom_kinds(label, objects)
            check_semantics(label, values, objects)
            check_injection(label, values, objects)
            check_mesh_ca(label, values, objects)
            check_controller_file(label, objects)
        for label, values, needles in BAD_VALUES:
            try:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                check(False, f"bad values accepted: {label}", json.dumps(values))
            except helm.HelmValuesError as e:
                message = str(e)
                check(all(n in message for n in needles), f"bad values refused with a message naming {needles}: {label}", message)
            except helm.HelmError as e:
                check(False, f"bad values refused, but not by the schema: {label}", str(e))
        # A template-level refusal: the mesh CA and a Secret of one's own for the xDS port.
        try:
            chart.render({"controller": {"xds": {"tls": {"secretName": "x"}}}}, name=RELEASE, namespace=NAMESPACE)
            check(False, "the mesh CA and controller.xds.tls.secretName at once accepted")
        except helm.HelmRenderError as e:
            check("controller.identity.enabled=false" in str(e), "the mesh CA and xds.tls at once refused", str(e))
        # A template-level refusal: two sources of the serving certificate.
        try:
            chart.render({"adapter": {"certManager": {"enabled": True}, "tls": {"secretName": "x", "caBundle": "eA=="}}},
                         name=RELEASE, namespace=NAMESPACE)
            check(False, "cert-manager and a given Secret at once accepted")
        except helm.HelmRenderError as e:
            check("choose one" in str(e), "cert-manager and a given Secret at once refused", str(e))
    except Exception:  # an unexpected crash is a failure with its traceback
        failures.append(traceback.format_exc())
    finally:
        chart.close()
    for f in failures:
        print(f"FAILED: {f}")
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
