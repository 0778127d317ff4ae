import pytest
import yaml

from cvpipe.deploy.kubernetes import render_manifests


def test_rolling_update_keeps_every_replica_available():
    docs = list(yaml.safe_load_all(render_manifests("registry.local/det:abc", name="My Detector", replicas=3,
                                                    run_id="20261124T000000000Z-abcdef")))
    dep, svc = docs
    assert dep["kind"] == "Deployment" and svc["kind"] == "Service"
    assert dep["metadata"]["name"] == "my-detector" == svc["metadata"]["name"]
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/det:abc"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 3000}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"] == svc["spec"]["selector"]
    assert dep["metadata"]["annotations"]["cvpipe/model-run-id"] == "20261124T000000000Z-abcdef"


def test_bad_replicas():
    with pytest.raises(ValueError):
        render_manifests("img", replicas=0)
