"""Kubernetes manifests for a packed model's Bento image.

The rolling update keeps every replica available (maxUnavailable 0, one surge pod), and a pod only
receives traffic once BentoML's /readyz answers, i.e. after its model is loaded. Build the image first
(`bentoml containerize NAME:VERSION`, needs Docker) and push it where the cluster can pull it.
"""

from __future__ import annotations

import re

import yaml


def _dns_name(name: str) -> str:
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return clean[:63] or "cvpipe"


def render_manifests(image: str, name: str = "cvpipe-detector", replicas: int = 2, port: int = 3000,
                     run_id: str | None = None, cpu: str = "1", memory: str = "1Gi",
                     namespace: str | None = None) -> str:
    """Deployment + Service (YAML, two documents) for serving `image` behind any load balancer."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    app = _dns_name(name)
    meta = {"name": app, "labels": {"app": app}}
    if namespace:
        meta["namespace"] = namespace
    annotations = {"cvpipe/model-run-id": run_id} if run_id else {}
    probe = {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 5, "failureThreshold": 3}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**meta, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "minReadySeconds": 5,
            "template": {
                "metadata": {"labels": {"app": app}, "annotations": annotations},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "service",
                        "image": image,
                        "ports": [{"containerPort": port, "name": "http"}],
                        "env": [{"name": "BENTOML_DO_NOT_TRACK", "value": "true"}],
                        "readinessProbe": {**probe, "initialDelaySeconds": 3},
                        "livenessProbe": {"httpGet": {"path": "/livez", "port": port}, "periodSeconds": 10,
                                          "failureThreshold": 6},
                        "startupProbe": {**probe, "failureThreshold": 60},
                        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
                        # Let the load balancer drop the pod before the server stops taking requests.
                        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
                    }],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80, "targetPort": port}]},
    }
    return yaml.safe_dump_all([deployment, service], sort_keys=False)
