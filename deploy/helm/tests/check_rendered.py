#!/usr/bin/env python3
"""Checks what the chart promises in the manifests `helm template` rendered for one values file.

    check_rendered.py NAME MANIFESTS.yaml

NAME is the values file (tests/values/NAME.yaml). Every rendered file gets the common checks
(non-root, read-only root, probes, grace period, config checksum, secrets by reference); the
file's own checks follow. Prints each failed check and exits 1 when any failed.
"""
import re
import sys

import yaml

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def objects(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def by_name(docs, kind, name):
    found = [d for d in objects(docs, kind) if d["metadata"]["name"] == name]
    check(len(found) == 1, f"expected one {kind} {name}, found {len(found)}")
    return found[0] if found else {}


def container(deployment):
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def common(docs):
    deployments = objects(docs, "Deployment")
    check(deployments, "no Deployment rendered")
    configmaps = objects(docs, "ConfigMap")
    check(len(configmaps) == 1 and "sluice.yaml" in configmaps[0]["data"], "one ConfigMap with sluice.yaml")
    # Variables the config needs (a `${NAME:-default}` has its default).
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", configmaps[0]["data"]["sluice.yaml"]))
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]
        spec = pod["spec"]
        c = container(d)
        process = "producer" if c["command"][0] == "sluice-producer" else "consumer"
        port = 9600 if process == "producer" else 9601
        sc = spec["securityContext"]
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 10001, f"{name}: runs as uid 10001, non-root")
        csc = c["securityContext"]
        check(csc.get("readOnlyRootFilesystem") is True, f"{name}: read-only root filesystem")
        check(csc.get("allowPrivilegeEscalation") is False, f"{name}: no privilege escalation")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: drops all capabilities")
        check(spec["terminationGracePeriodSeconds"] > 30, f"{name}: grace period longer than the 30 s shutdown wait")
        check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        check("/tmp" in mounts, f"{name}: writable /tmp")
        check(mounts.get("/etc/sluice", {}).get("readOnly") is True, f"{name}: config mounted read-only at /etc/sluice")
        env = env_of(c)
        check(env.get("SLUICE_CONFIG", {}).get("value") == "/etc/sluice/sluice.yaml", f"{name}: SLUICE_CONFIG")
        check(env.get("SLUICE_LISTEN", {}).get("value") == f"0.0.0.0:{port}", f"{name}: SLUICE_LISTEN on {port}")
        check(c["ports"][0]["containerPort"] == port, f"{name}: container port {port}")
        check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness on /healthz")
        check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness on /readyz")
        check(len(pod["metadata"]["annotations"].get("checksum/config", "")) == 64, f"{name}: config checksum annotation")
        if not c.get("envFrom"):
            for var in referenced:
                check(var in env, f"{name}: ${{{var}}} of the config has no variable in the pod")
        limits = c["resources"].get("limits", {})
        check("memory" in limits, f"{name}: memory limit")
    for s in objects(docs, "Service"):
        check(s["spec"].get("publishNotReadyAddresses") is True, f"{s['metadata']['name']}: lists unready pods too")


def consumer_deployments(docs):
    return [d for d in objects(docs, "Deployment") if container(d)["command"][0] == "sluice-consumer"]


def producer(docs):
    return by_name(docs, "Deployment", "sluice-producer")


def minimal(docs):
    p = producer(docs)
    check(p["spec"]["replicas"] == 1 and p["spec"]["strategy"]["type"] == "Recreate", "producer: one replica, Recreate")
    c = by_name(docs, "Deployment", "sluice-consumer-products-search")
    check(container(c)["command"] == ["sluice-consumer", "run", "--sink", "products-search"], "consumer runs its sink")
    check(c["spec"]["replicas"] == 1, "consumer: one replica")
    check(c["spec"]["template"]["metadata"]["labels"].get("sluice.io/sink") == "products-search", "sink label")
    check("startupProbe" in container(c), "consumer: startup probe")
    env = env_of(container(c))
    check(env["PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "sluice-postgres", "key": "password"}, "PG_PASSWORD from its Secret")
    pdb = by_name(docs, "PodDisruptionBudget", "sluice-consumer-products-search")
    check(pdb.get("spec", {}).get("maxUnavailable") == 1, "consumer PDB")
    check(not objects(docs, "HorizontalPodAutoscaler") and not objects(docs, "ScaledObject"), "no autoscaler")
    config = yaml.safe_load(objects(docs, "ConfigMap")[0]["data"]["sluice.yaml"])
    check(config["sinks"][0]["elasticsearch"]["auth"]["value"] == "${ES_API_KEY}", "config keeps ${ES_API_KEY}")


def keda(docs):
    scaled = {s["metadata"]["name"]: s for s in objects(docs, "ScaledObject")}
    check(set(scaled) == {"sluice-consumer-products-search", "sluice-consumer-orders-search"}, f"ScaledObjects: {sorted(scaled)}")
    products = scaled.get("sluice-consumer-products-search", {}).get("spec", {})
    orders = scaled.get("sluice-consumer-orders-search", {}).get("spec", {})
    check(products.get("maxReplicaCount") == 12, "products: max replicas = 12 partitions")
    check(orders.get("minReplicaCount") == 0 and orders.get("maxReplicaCount") == 4, "orders: 0..4")
    meta = orders.get("triggers", [{}])[0].get("metadata", {})
    check(meta.get("topic") == "shop.public.orders", f"orders topic: {meta.get('topic')}")
    check(meta.get("consumerGroup") == "orders_search", "orders consumer group = sink name")
    check(meta.get("lagThreshold") == "5000" and meta.get("activationLagThreshold") == "10", "lag thresholds")
    behavior = products.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    check(behavior.get("scaleDown", {}).get("stabilizationWindowSeconds") == 600, "behavior passed to KEDA")
    for d in consumer_deployments(docs):
        check("replicas" not in d["spec"], f"{d['metadata']['name']}: replicas left to the autoscaler")
    c = container(by_name(docs, "Deployment", "sluice-consumer-orders-search"))
    check(c["command"][-1] == "orders_search", "orders deployment runs sink orders_search")
    check(c["envFrom"] == [{"secretRef": {"name": "sluice-credentials"}}], "envFrom the credentials Secret")


def hpa(docs):
    h = by_name(docs, "HorizontalPodAutoscaler", "sluice-consumer-products-search")
    spec = h.get("spec", {})
    check(spec.get("minReplicas") == 2 and spec.get("maxReplicas") == 6, "HPA 2..6")
    metrics = {m["type"]: m for m in spec.get("metrics", [])}
    check(metrics.get("Resource", {}).get("resource", {}).get("target", {}).get("averageUtilization") == 80, "CPU 80%")
    ext = metrics.get("External", {}).get("external", {})
    check(ext.get("metric", {}).get("selector", {}).get("matchLabels") == {"sink": "products-search"}, "lag metric of the sink")
    check(ext.get("target", {}).get("averageValue") == "2000", "lag target 2000")
    check(not objects(docs, "ScaledObject"), "no ScaledObject")


def per_sink(docs):
    replicas = {d["metadata"]["name"]: d["spec"].get("replicas") for d in consumer_deployments(docs)}
    check(replicas == {
        "sluice-consumer-products-elasticsearch": 4,
        "sluice-consumer-products-opensearch": 2,
        "sluice-consumer-orders-archive": 1,
    }, f"consumer replicas {replicas}")
    big = container(by_name(docs, "Deployment", "sluice-consumer-products-elasticsearch"))
    check(big["resources"]["limits"]["memory"] == "768Mi", "per-sink resources")
    pdbs = sorted(p["metadata"]["name"] for p in objects(docs, "PodDisruptionBudget"))
    check(pdbs == ["sluice-consumer-products-elasticsearch", "sluice-consumer-products-opensearch"], f"PDBs {pdbs}")
    p = producer(docs)["spec"]
    check(p["replicas"] == 2 and p["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}, "producer standby")
    data = objects(docs, "ConfigMap")[0]["data"]
    check("orders-settings.json" in data, "extra file in the ConfigMap")


def shared(docs):
    consumers = consumer_deployments(docs)
    check([d["metadata"]["name"] for d in consumers] == ["sluice-consumer"], "one consumer Deployment")
    if consumers:
        check(container(consumers[0])["command"] == ["sluice-consumer", "run"], "runs every sink")
    # Rendered without the KEDA API: the HPA fallback.
    h = by_name(docs, "HorizontalPodAutoscaler", "sluice-consumer")
    check(h.get("spec", {}).get("maxReplicas") == 6, "max replicas = default 6 partitions")


def shared_with_keda(docs):
    s = by_name(docs, "ScaledObject", "sluice-consumer")
    groups = [t["metadata"]["consumerGroup"] for t in s.get("spec", {}).get("triggers", [])]
    check(groups == ["products-search", "orders-search"], f"a trigger per sink: {groups}")
    check(not objects(docs, "HorizontalPodAutoscaler"), "no HPA beside KEDA")


def kafka_tls_sasl(docs):
    for d in objects(docs, "Deployment"):
        c = container(d)
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        check(mounts.get("/etc/sluice-tls", {}).get("readOnly") is True, "CA Secret mounted")
        check(env_of(c)["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sluice-kafka", "Kafka password from its Secret")
    s = by_name(docs, "ScaledObject", "sluice-consumer-products-search")
    trigger = s.get("spec", {}).get("triggers", [{}])[0]
    check(trigger.get("authenticationRef") == {"name": "sluice-kafka"}, "KEDA authenticates with the TriggerAuthentication")
    check(trigger.get("metadata", {}).get("bootstrapServers") == "kafka-0.kafka:9093,kafka-1.kafka:9093", "brokers for KEDA")


def opensearch_basic(docs):
    n = by_name(docs, "NetworkPolicy", "sluice")
    spec = n.get("spec", {})
    check(spec.get("policyTypes") == ["Ingress", "Egress"], "ingress and egress")
    check(len(spec.get("egress", [])) == 3, "DNS plus the two egress rules")
    config = yaml.safe_load(objects(docs, "ConfigMap")[0]["data"]["sluice.yaml"])
    auth = config["sinks"][0]["elasticsearch"]["auth"]
    check(auth == {"type": "basic", "username": "sluice", "password": "${OPENSEARCH_PASSWORD}"}, "basic auth by reference")


def service_monitor(docs):
    m = by_name(docs, "ServiceMonitor", "sluice")
    check(m.get("spec", {}).get("endpoints", [{}])[0].get("path") == "/metrics", "scrapes /metrics")


CHECKS = {
    "minimal": minimal,
    "keda": keda,
    "hpa": hpa,
    "per-sink": per_sink,
    "shared": shared,
    "shared-with-keda": shared_with_keda,
    "kafka-tls-sasl": kafka_tls_sasl,
    "opensearch-basic": opensearch_basic,
    "service-monitor": service_monitor,
}


def main():
    name, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    common(docs)
    CHECKS[name](docs)
    for failure in failures:
        print(f"  {name}: {failure}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
