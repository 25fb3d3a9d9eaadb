"""Kubernetes client set-up shared by the CLI and the process runtime."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from ..api.v1alpha1 import GROUP, VERSION

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def _in_cluster() -> bool:
    # One stat at start-up; not worth a thread.
    return SERVICE_ACCOUNT_TOKEN.exists()


async def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from an explicit kubeconfig, $KUBECONFIG, ~/.kube/config or in-cluster."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not _in_cluster():
        try:
            configuration = client.Configuration()
            await config.load_kube_config(config_file=path, client_configuration=configuration)
            return client.ApiClient(configuration)
        except (ConfigException, FileNotFoundError) as exc:
            raise RuntimeError(
                f"no usable kubeconfig ({path or '~/.kube/config'}): {exc}. Start the local "
                "cluster with `ringkeeper dev-cluster up` and export KUBECONFIG=$(ringkeeper "
                "dev-cluster kubeconfig), or pass --kubeconfig."
            ) from exc
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace a kubeconfig's current context names, else 'default'."""
    try:
        _, context = config.list_kube_config_contexts(
            config_file=kubeconfig or os.environ.get("KUBECONFIG")
        )
        ns = (context or {}).get("context", {}).get("namespace")
        return str(ns) if ns else "default"
    except (ConfigException, FileNotFoundError, TypeError):
        return "default"


class CustomObjects:
    """Typed-enough access to Ringkeeper's custom objects."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = client.CustomObjectsApi(api)

    async def list(self, plural: str, namespace: str | None) -> list[dict[str, object]]:
        if namespace is None:
            result = await self._api.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            result = await self._api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural
            )
        items: list[dict[str, object]] = result.get("items", [])
        return items
