#!/usr/bin/env python3
"""Turns the container of a Deployment that `helm template` rendered into a `docker run`: same
image, command, user and group, read-only root filesystem, dropped capabilities, no privilege
escalation, the ConfigMap's files mounted read-only where the pod mounts them, the emptyDir as a
tmpfs, the same environment (a Secret's key is read from the variable SECRET_<secret>_<key>,
upper-cased, `-`/`.` as `_`, standing in for the Secret), and the pod's probes and grace period.

    pod_to_docker.py MANIFESTS.yaml DEPLOYMENT CONFIG-DIR NAME

Writes the ConfigMap's files into CONFIG-DIR and prints JSON:
{"run": [docker run arguments], "probes": {...}, "port": N, "grace": seconds}.
"""
import json
import os
import re
import sys

import yaml


def secret_env_name(secret, key):
    return "SECRET_" + re.sub(r"[-.]", "_", f"{secret}_{key}").upper()


def main():
    manifests, deployment, config_dir, name = sys.argv[1:5]
    with open(manifests, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    [dep] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment]
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})

    run = ["--name", name, "--network", "host"]
    user = csc.get("runAsUser", psc.get("runAsUser"))
    group = csc.get("runAsGroup", psc.get("runAsGroup"))
    if user is not None:
        run += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if psc.get("fsGroup") is not None:
        run += ["--group-add", str(psc["fsGroup"])]
    if csc.get("readOnlyRootFilesystem"):
        run.append("--read-only")
    if csc.get("allowPrivilegeEscalation") is False:
        run += ["--security-opt", "no-new-privileges"]
    for cap in csc.get("capabilities", {}).get("drop", []):
        run += ["--cap-drop", cap]
    if csc.get("privileged"):
        run.append("--privileged")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "configMap" in v:
            data = configmaps[v["configMap"]["name"]]["data"]
            os.makedirs(config_dir, exist_ok=True)
            for file, content in data.items():
                with open(os.path.join(config_dir, file), "w", encoding="utf-8") as f:
                    f.write(content)
                os.chmod(os.path.join(config_dir, file), 0o644)
            run += ["--mount", f"type=bind,source={config_dir},target={m['mountPath']}"
                    + (",readonly" if m.get("readOnly") else "")]
        elif "emptyDir" in v:
            size = v["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m").replace("Gi", "g")
            run += ["--tmpfs", f"{m['mountPath']}:rw,size={size},uid={user},gid={group}"]
        else:
            sys.exit(f"volume {m['name']}: only configMap and emptyDir volumes are run here")

    for e in c.get("env", []):
        if "value" in e:
            run += ["--env", f"{e['name']}={e['value']}"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            stand_in = secret_env_name(ref["name"], ref["key"])
            if stand_in not in os.environ:
                sys.exit(f"env {e['name']}: set {stand_in} (the value of Secret {ref['name']}, key {ref['key']})")
            run += ["--env", f"{e['name']}={os.environ[stand_in]}"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        run += ["--memory", limits["memory"].replace("Mi", "m").replace("Gi", "g")]
    # Docker's own wait before SIGKILL, as the kubelet's.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    run += ["--stop-timeout", str(grace)]
    run.append(c["image"])
    run += c["command"] + c.get("args", [])

    probes = {kind: c[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in c}
    print(json.dumps({"run": run, "probes": probes, "port": c["ports"][0]["containerPort"], "grace": grace}))


if __name__ == "__main__":
    main()
