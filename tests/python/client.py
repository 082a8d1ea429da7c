"""The Python `kubernetes` client through Gatehouse: the second client of the integration tests.

Usage: python client.py KUBECONFIG
       python client.py KUBECONFIG expired CONTINUE_TOKEN
Prints one JSON object with what each call returned; the Rust test asserts on it. Every call
goes through the proxy with the kubeconfig's bearer token, exactly as a user's script would.
The second form continues a list from a token whose version the cluster has compacted away,
and does what a client must on 410 Gone: list again from the start.
"""

import json
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main() -> None:
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    out = {}

    out["pods"] = sorted(p.metadata.name for p in v1.list_namespaced_pod("apps").items)

    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="from-python", labels={"client": "python"}),
        data={"greeting": "hello"},
    )
    created = v1.create_namespaced_config_map("apps", body)
    out["created_uid"] = created.metadata.uid

    patched = v1.patch_namespaced_config_map(
        "from-python", "apps", {"data": {"greeting": "patched"}}
    )
    out["patched"] = patched.data["greeting"]

    # A watch from the list's resourceVersion sees the next change as it happens.
    rv = v1.list_namespaced_config_map("apps").metadata.resource_version
    v1.patch_namespaced_config_map("from-python", "apps", {"data": {"watched": "yes"}})
    seen = []
    w = watch.Watch()
    for event in w.stream(
        v1.list_namespaced_config_map,
        "apps",
        resource_version=rv,
        timeout_seconds=10,
    ):
        seen.append([event["type"], event["object"].metadata.name])
        if event["object"].metadata.name == "from-python":
            w.stop()
    out["watched"] = seen

    secret = v1.read_namespaced_secret("db-credentials", "apps")
    out["secret_data"] = secret.data

    v1.delete_namespaced_config_map("from-python", "apps")
    try:
        v1.read_namespaced_config_map("from-python", "apps")
        out["deleted"] = False
    except ApiException as e:
        out["deleted"] = e.status == 404

    try:
        v1.read_namespaced_secret("api-keys", "prod")
        out["forbidden"] = None
    except ApiException as e:
        out["forbidden"] = {"status": e.status, "message": json.loads(e.body).get("message")}

    print(json.dumps(out))


def expired(continue_token: str) -> None:
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    out = {"gone": None}
    try:
        v1.list_namespaced_config_map("apps", limit=1, _continue=continue_token)
    except ApiException as e:
        out["gone"] = {"status": e.status, "reason": e.reason}
    # Start the list again.
    listed = v1.list_namespaced_config_map("apps")
    out["relisted"] = sorted(c.metadata.name for c in listed.items)
    out["relisted_rv"] = listed.metadata.resource_version
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[2] == "expired":
        expired(sys.argv[3])
    else:
        main()
