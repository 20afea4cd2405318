"""The operator's Kubernetes client: kubernetes_asyncio's, counting its requests, and
looking at proxy variables and ~/.netrc only when kopf's own connection does.

kubernetes_asyncio hard-wires aiohttp's ``trust_env=True``: every request then looks up the
proxy variables and reads ``~/.netrc`` in a worker thread, twice a request, which was 10 % of
the operator's CPU in a 100-job wave. kopf's watches follow ``settings.networking.trust_env``
(off by default), so an operator whose watches connect directly gains nothing from the
lookups; its requests follow the same setting. (A netrc entry for the API server's host would
even break token authentication: aiohttp refuses a netrc login beside an Authorization
header.)
"""

from __future__ import annotations

import os

import aiohttp
from kubernetes_asyncio import client, config

from densenet_operator.metrics import CountedApiClient

# kubernetes_asyncio's own: a watch event of a large object can exceed aiohttp's default.
READ_BUFFER_BYTES = 2**21
CONNECTIONS = 64


async def build_api_client(*, trust_env: bool) -> client.ApiClient:
    """In-cluster credentials in a pod (unless KUBECONFIG says otherwise), else kubeconfig."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        await config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = CONNECTIONS
    api = CountedApiClient(configuration)
    trust_environment(api, trust_env)
    return api


def trust_environment(api: client.ApiClient, trust_env: bool) -> None:
    """Reopen the client's session on the same connector (TLS and pool as configured) with
    ``trust_env`` as asked. Call from the event loop that will use it."""
    session = api.rest_client.pool_manager
    if session.trust_env == trust_env:
        return
    connector = session.connector
    session.detach()  # the connector stays open for the new session
    api.rest_client.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=trust_env, read_bufsize=READ_BUFFER_BYTES
    )
