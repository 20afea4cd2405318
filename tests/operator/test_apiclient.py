"""The operator's client against a stand-in API server (aiohttp, real HTTP): it follows
kopf's trust_env, so a proxy variable in the environment is looked up only when asked for."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.config import kube_config

from densenet_operator.apiclient import build_api_client
from tests.operator.test_metrics import free_port


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


@pytest.mark.asyncio
@pytest.mark.parametrize("trust_env", [False, True])
async def test_proxy_variables_count_only_when_kopf_would_use_them(
    trust_env: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    async def namespace(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"kind": "Namespace", "metadata": {"name": "a"}})

    app = web.Application()
    app.add_routes([web.get("/api/v1/namespaces/{name}", namespace)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config_file = str(kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}"))
    monkeypatch.setenv("KUBECONFIG", config_file)
    # kubernetes_asyncio reads $KUBECONFIG once, on import (as the operator's process sets it)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", config_file)
    # loading it sets the process's default configuration: restored afterwards
    monkeypatch.setattr(client.Configuration, "_default", client.Configuration._default)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    api = await build_api_client(trust_env=trust_env)
    try:
        assert api.rest_client.pool_manager.trust_env is trust_env
        core = client.CoreV1Api(api)
        if trust_env:  # through the proxy that is not there
            with pytest.raises(aiohttp.ClientProxyConnectionError):
                await core.read_namespace("a", _preload_content=False)
            assert seen == []
        else:
            reply = await core.read_namespace("a", _preload_content=False)
            assert reply.status == 200 and seen == ["Bearer t0ken"]
    finally:
        await api.close()
        await runner.cleanup()
    assert api.rest_client.pool_manager.closed
