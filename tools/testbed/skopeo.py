"""skopeo, with the TLS and credential flags that registries of the test bed need, and seeding images with it."""

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from tools.testbed.process import ServiceError
from tools.testbed.registry import registry_for_host

SKOPEO_BINARY = shutil.which('skopeo') or '/usr/bin/skopeo'

# The default of the ``*creds`` arguments: the credentials of the registry of the test bed a reference names.
AUTO = object()


def _transport_flags(ref, prefix, creds):
    """Flags skopeo needs to reach a registry of ours named in ``ref`` (``docker://127.0.0.1:PORT/...``)."""
    if not ref.startswith('docker://'):
        return []
    registry = registry_for_host(ref[len('docker://'):].split('/', 1)[0])
    flags = []
    if registry is not None:
        if registry.tls:
            flags.append(f'--{prefix}cert-dir={registry.cert_dir}')
        else:
            flags.append(f'--{prefix}tls-verify=false')
    if creds is AUTO:
        creds = registry.credentials if registry is not None else None
    # Without credentials say so, so skopeo never falls back to credentials stored for this user.
    flags.append(f'--{prefix}creds={creds}' if creds else f'--{prefix}no-creds')
    return flags


def skopeo(*args, check=True):
    """Run ``skopeo ARGS`` (with an accept-anything policy); returns CompletedProcess. Raises with its stderr."""
    env = dict(os.environ)
    # Keep skopeo from picking up credentials a developer has stored for real registries.
    env.pop('REGISTRY_AUTH_FILE', None)
    result = subprocess.run([SKOPEO_BINARY, '--insecure-policy', *args], capture_output=True, env=env,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise ServiceError(f'skopeo {" ".join(args)} failed ({result.returncode}):\n'
                           f'{result.stderr.decode(errors="replace")}')
    return result


def skopeo_copy(src, dst, *extra, src_creds=AUTO, dest_creds=AUTO):
    """``skopeo copy SRC DST EXTRA...``; registries started here get their TLS and credential flags added.

    ``src_creds``/``dest_creds``: AUTO uses the registry's own credentials, None forces anonymous access, and a
    ``'user:password'`` string overrides. Returns the CompletedProcess; raises ``ServiceError`` on failure.
    """
    flags = _transport_flags(src, 'src-', src_creds) + _transport_flags(dst, 'dest-', dest_creds)
    return skopeo('copy', *flags, *extra, src, dst)


def skopeo_inspect(ref, raw=False, config=False, creds=AUTO, parse=True):
    """``skopeo inspect [--raw] [--config] REF``: parsed JSON, or the exact bytes when ``parse=False``.

    With ``raw`` the answer is the manifest as stored (so its sha256 is the manifest digest); with ``config`` the
    image configuration. ``creds`` works as in ``skopeo_copy``.
    """
    args = ['inspect', *_transport_flags(ref, '', creds)]
    if raw:
        args.append('--raw')
    if config:
        args.append('--config')
    output = skopeo(*args, ref).stdout
    return json.loads(output) if parse else output


def seed_image(registry, name, tag, oci_layout_dir, *extra):
    """Push the image in an OCI layout directory to ``registry`` as ``name:tag`` with skopeo.

    The layout must hold exactly one manifest (as ``build_oci_layout`` writes). ``extra`` goes to skopeo copy
    (e.g. ``'--format', 'v2s2'``). Returns the pushed manifest's digest (``sha256:...``).
    """
    digest_file = Path(oci_layout_dir).parent / f'.{Path(oci_layout_dir).name}.{secrets.token_hex(4)}.digest'
    try:
        skopeo_copy(f'oci:{oci_layout_dir}', f'docker://{registry.host}/{name}:{tag}',
                    '--digestfile', str(digest_file), *extra)
        return digest_file.read_text().strip()
    finally:
        digest_file.unlink(missing_ok=True)
