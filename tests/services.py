"""Real services for tests: the test bed of ``tools/testbed`` under the names the test modules import.

A CNCF distribution registry (plain, TLS with HTTP/2, htpasswd Basic, token auth with a counting token server), a
Podman API service with isolated vfs storage, skopeo, and deterministic OCI layouts: all of it lives in
``tools/testbed`` so that the benchmark (tools/bench_env.py) starts its registries the same way; this module only
names it for tests. Inside pytest use the fixtures in ``tests/conftest.py``; helpers that several test modules
share live in ``tests/helpers.py``.
"""

from tools.testbed import (AUTO, DEFAULT_USERS, FIXED_MTIME, MEDIA_TYPES, STARTUP_TIMEOUT,  # noqa: F401
                           AccessLogEntry, OciImage, PassStore, Podman, Registry, ServiceError, TokenRequest,
                           TokenServer, build_oci_layout, free_port, layer_tar, parse_scope, registry_for_host,
                           seed_image, skopeo, skopeo_copy, skopeo_inspect, write_client_material, write_htpasswd,
                           write_tls_material)
