"""kubelet's API server (``--port``) assembled from the agent's settings: TLS, the
authentication and authorization in front, the route sets behind."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from kubernetes.client import ApiClient

from nodelet.config import AgentConfig
from nodelet.server import kubeletauth
from nodelet.server.kubelet import (
    Installer,
    KubeletServer,
    KubeletServerError,
    KubeletServerSettings,
)


def kubelet_server(
    config: AgentConfig,
    installers: Sequence[Installer],
    api: Callable[[], ApiClient | None],
) -> KubeletServer:
    """The server (not started); ``KubeletServerError`` for webhooks without an API server,
    as kubelet refuses to start then too."""
    if config.kubelet_port and config.kubeconfig is None:
        if config.effective_authorization_mode == "Webhook":
            raise KubeletServerError(
                "no client provided, cannot use webhook authorization: --authorization-mode "
                "Webhook needs --kubeconfig (or --port 0)"
            )
        if config.effective_token_webhook:
            raise KubeletServerError(
                "no client provided, cannot use webhook authentication: "
                "--authentication-token-webhook needs --kubeconfig (or --port 0)"
            )
    settings = KubeletServerSettings(
        address=config.address,
        port=config.kubelet_port,
        cert_file=config.tls_cert_file,
        key_file=config.tls_private_key_file,
        client_ca_file=config.client_ca_file,
        tls_min_version=config.tls_min_version,
        read_only_port=config.read_only_port,
    )
    auth = kubeletauth.AuthSettings(
        anonymous=config.anonymous_auth,
        client_ca_file=config.client_ca_file,
        webhook_authentication=config.effective_token_webhook,
        authn_cache_ttl=config.authentication_token_webhook_cache_ttl,
        authorization_mode=config.effective_authorization_mode,
        authz_cache_authorized_ttl=config.authorization_webhook_cache_authorized_ttl,
        authz_cache_unauthorized_ttl=config.authorization_webhook_cache_unauthorized_ttl,
    )
    return KubeletServer(
        settings,
        config.pki_dir,
        config.node_name,
        installers,
        [kubeletauth.auth_middleware(auth, config.node_name, api)],
        addresses=(config.node_ip, socket.gethostname()),
    )
