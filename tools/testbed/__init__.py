"""The test bed shared by the test suite and the benchmark: real services on loopback and the images they serve.

One module per concern: ``ports`` (free loopback ports), ``process`` (starting and stopping children,
``ServiceError``), ``tls`` (a generated CA and server certificates), ``auth`` (htpasswd files and a Docker token
server), ``registry`` (a real ``docker-registry`` on a free port, plain or TLS, its access log), ``podman`` (a
``podman system service`` with isolated vfs storage), ``skopeo`` (skopeo with the flags our registries need, and
seeding), ``layouts`` (deterministic OCI image layouts), ``credstore`` (a ``docker-credential-pass`` store with a gpg
key of its own). Everything public is re-exported here, so callers write
``from tools.testbed import Registry, seed_image``.

Typical use::

    with Registry(tmpdir, tls=True, auth='basic') as registry:
        image = build_oci_layout(tmpdir / 'img', layers=[{'etc/hello': b'hi\\n'}])
        seed_image(registry, 'library/hello', 'v1', image.path)
        manifest = skopeo_inspect(f'docker://{registry.host}/library/hello:v1', raw=True)

Only tools/ modules are imported here: tools never import from tests/ (tests import from tools/).
"""

from tools.testbed.auth import DEFAULT_USERS, TokenRequest, TokenServer, parse_scope, write_htpasswd
from tools.testbed.credstore import PassStore
from tools.testbed.layouts import FIXED_MTIME, MEDIA_TYPES, OciImage, build_oci_layout, layer_tar
from tools.testbed.podman import Podman
from tools.testbed.ports import free_port
from tools.testbed.process import STARTUP_TIMEOUT, ServiceError, die_with_parent, stop_process
from tools.testbed.registry import AccessLogEntry, Registry, probe_registry, registry_config, registry_for_host
from tools.testbed.skopeo import AUTO, seed_image, skopeo, skopeo_copy, skopeo_inspect
from tools.testbed.tls import client_context, write_client_material, write_tls_material

__all__ = [
    'AUTO', 'AccessLogEntry', 'DEFAULT_USERS', 'FIXED_MTIME', 'MEDIA_TYPES', 'OciImage', 'PassStore', 'Podman',
    'Registry', 'STARTUP_TIMEOUT', 'ServiceError', 'TokenRequest', 'TokenServer', 'build_oci_layout', 'client_context',
    'die_with_parent', 'free_port', 'layer_tar', 'parse_scope', 'probe_registry', 'registry_config',
    'registry_for_host', 'seed_image', 'skopeo', 'skopeo_copy', 'skopeo_inspect', 'stop_process',
    'write_client_material', 'write_htpasswd', 'write_tls_material',
]
