"""Per-registry TLS material from certs.d directories, as podman, skopeo and docker read them.

For a registry `HOST[:PORT]` the first existing directory of `ROOT/HOST[:PORT]/` is used, the roots being
`$OCCYSTRAP_CERTS_D` (colon-separated, replacing the defaults; for tests and unusual set-ups) or, by default,
`~/.config/containers/certs.d` (when not root), `/etc/containers/certs.d` and `/etc/docker/certs.d`. In it, every
`*.crt` is a CA trusted for that registry (beside the usual ones), and `NAME.cert` with `NAME.key` is a client
certificate for mutual TLS.
"""

import os
import re

from occystrap.errors import OccystrapError

ENV_ROOTS = 'OCCYSTRAP_CERTS_D'
SYSTEM_ROOTS = ('/etc/containers/certs.d', '/etc/docker/certs.d')
# A registry authority as a directory name: DNS labels or an IPv4 address, or a bracketed IPv6 one, and a port.
# Anything else (a '..', a '/', an empty label) never becomes a path.
AUTHORITY_RE = re.compile(r'^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}'
                          r'[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$')


class CertsDirError(OccystrapError):
    """A certs.d directory holds something unusable (a key without its certificate, a bad PEM)."""


class HostTls:
    """What a certs.d directory says for one registry: its directory, CA files, and a client (cert, key) pair.

    Compared and hashed by identity: each is read once per run (HttpClient keeps them per host).
    """

    __slots__ = ('directory', 'ca_files', 'client')

    def __init__(self, directory, ca_files=(), client=None):
        self.directory = directory
        self.ca_files = tuple(ca_files)
        self.client = client


def roots(environ=None):
    """The certs.d roots searched, in order."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_ROOTS) is not None:
        return [path for path in environ[ENV_ROOTS].split(':') if path]
    found = []
    if os.geteuid() != 0:
        home = environ.get('HOME') or os.path.expanduser('~')
        found.append(os.path.join(home, '.config', 'containers', 'certs.d'))
    return found + list(SYSTEM_ROOTS)


def authority(host, port=None):
    """'host' or 'host:port' as certs.d names the directory of a registry (IPv6 addresses in brackets)."""
    if ':' in host and not host.startswith('['):
        host = '[%s]' % host
    return '%s:%d' % (host, port) if port else host


def find(registry, search=None):
    """The HostTls for `registry` (HOST[:PORT]) from the first certs.d root that has a directory for it, or None.

    Raises CertsDirError when that directory is unreadable or holds a client key without its certificate (or the
    reverse).
    """
    if not AUTHORITY_RE.match(registry or ''):
        return None
    for root in roots() if search is None else search:
        directory = os.path.join(root, registry)
        if not os.path.isdir(directory):
            continue
        return read_dir(directory)
    return None


def read_dir(directory):
    """The HostTls of one certs.d host directory."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise CertsDirError('cannot read certs.d directory %s: %s' % (directory, e.strerror or type(e).__name__))
    cas = tuple(os.path.join(directory, n) for n in names if n.endswith('.crt'))
    certs = {n[:-len('.cert')] for n in names if n.endswith('.cert')}
    keys = {n[:-len('.key')] for n in names if n.endswith('.key')}
    for stem in sorted(certs ^ keys):
        have, missing = ('.cert', '.key') if stem in certs else ('.key', '.cert')
        raise CertsDirError('certs.d directory %s has %s%s but no %s%s' % (directory, stem, have, stem, missing))
    client = None
    if certs:
        stem = sorted(certs)[0]       # one client certificate per registry: the first by name
        client = (os.path.join(directory, stem + '.cert'), os.path.join(directory, stem + '.key'))
    return HostTls(directory, cas, client)
