"""Write one image as an OCI runtime bundle (`oci:///PATH`) that runc can run.

```
PATH/config.json     the runtime configuration, generated from the image config
PATH/rootfs/         every layer applied bottom first, whiteouts honoured
```

config.json follows `runc spec` (runc 1.1, runtime spec 1.0.2): the same default capabilities, rlimits, mounts,
namespaces, masked and read-only paths, with what the image says filled in the way the OCI image spec's
"conversion" section and umoci do it: process.args = Entrypoint + Cmd, env = Env (PATH added when missing, HOME
from the user's passwd entry), cwd = WorkingDir or '/', user from User (names looked up in the rootfs's /etc/passwd
and /etc/group, read without following symlinks; supplementary groups from /etc/group), labels and image facts as
annotations. Unlike `runc spec` the process has no terminal and the root is writable, so `runc run` works from a
script.

The bundle is built in a hidden directory beside PATH (mode 0700, as umoci makes bundles, because the rootfs may
hold set-id files) and renamed to PATH when complete. PATH must not exist or be an empty directory.
"""

import json
import logging
import os

from occystrap import extract
from occystrap.errors import CorruptImageError, OccystrapError
from occystrap.outputs.staging import StagedImageOutput

LOG = logging.getLogger(__name__)

OCI_VERSION = '1.0.2'
DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
DEFAULT_CAPABILITIES = ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE']

# What `runc spec` (runc 1.1.5) generates, kept verbatim so bundles behave like any other runc bundle.
DEFAULT_MOUNTS = [
    {'destination': '/proc', 'type': 'proc', 'source': 'proc'},
    {'destination': '/dev', 'type': 'tmpfs', 'source': 'tmpfs',
     'options': ['nosuid', 'strictatime', 'mode=755', 'size=65536k']},
    {'destination': '/dev/pts', 'type': 'devpts', 'source': 'devpts',
     'options': ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5']},
    {'destination': '/dev/shm', 'type': 'tmpfs', 'source': 'shm',
     'options': ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k']},
    {'destination': '/dev/mqueue', 'type': 'mqueue', 'source': 'mqueue', 'options': ['nosuid', 'noexec', 'nodev']},
    {'destination': '/sys', 'type': 'sysfs', 'source': 'sysfs', 'options': ['nosuid', 'noexec', 'nodev', 'ro']},
    {'destination': '/sys/fs/cgroup', 'type': 'cgroup', 'source': 'cgroup',
     'options': ['nosuid', 'noexec', 'nodev', 'relatime', 'ro']},
]
DEFAULT_LINUX = {
    'resources': {'devices': [{'allow': False, 'access': 'rwm'}]},
    'namespaces': [{'type': 'pid'}, {'type': 'network'}, {'type': 'ipc'}, {'type': 'uts'}, {'type': 'mount'}],
    'maskedPaths': ['/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats',
                    '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi'],
    'readonlyPaths': ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
}


def parse_passwd(data):
    """(name, uid, gid, home) for each well-formed line of an /etc/passwd."""
    entries = []
    for line in data.decode('utf-8', 'replace').splitlines():
        fields = line.split(':')
        if len(fields) >= 6 and fields[2].isdigit() and fields[3].isdigit():
            entries.append((fields[0], int(fields[2]), int(fields[3]), fields[5]))
    return entries


def parse_group(data):
    """(name, gid, [members]) for each well-formed line of an /etc/group."""
    entries = []
    for line in data.decode('utf-8', 'replace').splitlines():
        fields = line.split(':')
        if len(fields) >= 4 and fields[2].isdigit():
            entries.append((fields[0], int(fields[2]), [m for m in fields[3].split(',') if m]))
    return entries


def resolve_user(spec, rootfs, reference):
    """uid, gid, supplementary gids and home directory for an image's User ('', uid, name, with ':group').

    Follows runc's rules: a numeric uid need not exist in /etc/passwd; a name must. Without an explicit group
    the primary group comes from the passwd entry and supplementary groups from /etc/group memberships.
    """
    user, _, group = (spec or '').partition(':')
    passwd = parse_passwd(extract.read_file_in(rootfs, '/etc/passwd') or b'')
    groups = parse_group(extract.read_file_in(rootfs, '/etc/group') or b'')
    uid, gid, home, entry = 0, 0, None, None
    if user == '' or user.isdigit():
        uid = int(user or 0)
        entry = next((e for e in passwd if e[1] == uid), None)
    else:
        entry = next((e for e in passwd if e[0] == user), None)
        if entry is None:
            raise OccystrapError('%s: user %r is not in the image\'s /etc/passwd' % (reference, user))
        uid = entry[1]
    if entry is not None:
        gid, home = entry[2], entry[3]
    additional = []
    if group.isdigit():
        gid = int(group)
    elif group:
        found = next((g for g in groups if g[0] == group), None)
        if found is None:
            raise OccystrapError('%s: group %r is not in the image\'s /etc/group' % (reference, group))
        gid = found[1]
    elif entry is not None:
        additional = sorted({g[1] for g in groups if entry[0] in g[2] and g[1] != gid})
    return uid, gid, additional, home


# The image config's execution fields and what each must be (image-spec, "Properties" of config): the values reach
# config.json and the process a runtime starts.
_STRINGS = 'a list of strings'
_CONFIG_TYPES = {'Entrypoint': _STRINGS, 'Cmd': _STRINGS, 'Env': _STRINGS, 'User': 'a string',
                 'WorkingDir': 'a string', 'Hostname': 'a string', 'StopSignal': 'a string',
                 'Labels': 'an object of strings', 'ExposedPorts': 'an object'}


def _is(value, kind):
    if kind == _STRINGS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == 'a string':
        return isinstance(value, str)
    if kind == 'an object of strings':
        return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())
    return isinstance(value, dict)


def execution_config(image):
    """The image config's `config` object, its fields checked: a number for Entrypoint or a list for User is a
    corrupt image (one line), not an internal error."""
    config = image.config.get('config') or {}
    if not isinstance(config, dict):
        raise CorruptImageError('%s: the image config\'s "config" is not an object' % image.reference)
    for key, kind in _CONFIG_TYPES.items():
        if config.get(key) is not None and not _is(config[key], kind):
            raise CorruptImageError('%s: the image config\'s %s is not %s' % (image.reference, key, kind))
    return config


def image_annotations(image_config, config=None):
    """Annotations the OCI image spec's conversion rules derive from an image config, labels included."""
    config = image_config.get('config') or {} if config is None else config
    annotations = dict(config.get('Labels') or {})
    facts = {
        'org.opencontainers.image.os': image_config.get('os'),
        'org.opencontainers.image.architecture': image_config.get('architecture'),
        'org.opencontainers.image.variant': image_config.get('variant'),
        'org.opencontainers.image.os.version': image_config.get('os.version'),
        'org.opencontainers.image.os.features': ','.join(f for f in image_config.get('os.features') or []
                                                         if isinstance(f, str)),
        'org.opencontainers.image.author': image_config.get('author'),
        'org.opencontainers.image.created': image_config.get('created'),
        'org.opencontainers.image.stopSignal': config.get('StopSignal'),
        'org.opencontainers.image.exposedPorts': ','.join(sorted(config.get('ExposedPorts') or {})),
    }
    annotations.update({k: v for k, v in facts.items() if v and isinstance(v, str)})
    return annotations


def runtime_config(image, rootfs, warn):
    """The runtime spec config.json (a dict) for an image whose layers are applied at `rootfs`."""
    config = execution_config(image)
    args = list(config.get('Entrypoint') or []) + list(config.get('Cmd') or [])
    if not args:
        warn('%s: the image has no Entrypoint or Cmd; config.json runs "sh"' % image.reference)
        args = ['sh']
    uid, gid, additional, home = resolve_user(config.get('User'), rootfs, image.reference)
    env = list(config.get('Env') or [])
    if not any(e.startswith('PATH=') for e in env):
        env.insert(0, DEFAULT_PATH)
    if home and not any(e.startswith('HOME=') for e in env):
        env.append('HOME=' + home)
    user = {'uid': uid, 'gid': gid}
    if additional:
        user['additionalGids'] = additional
    spec = {
        'ociVersion': OCI_VERSION,
        'process': {
            'terminal': False,
            'user': user,
            'args': args,
            'env': env,
            'cwd': config.get('WorkingDir') or '/',
            'capabilities': {kind: list(DEFAULT_CAPABILITIES)
                             for kind in ('bounding', 'effective', 'permitted', 'ambient')},
            'rlimits': [{'type': 'RLIMIT_NOFILE', 'hard': 1024, 'soft': 1024}],
            'noNewPrivileges': True,
        },
        'root': {'path': 'rootfs', 'readonly': False},
        'hostname': config.get('Hostname') or 'occystrap',
        'mounts': json.loads(json.dumps(DEFAULT_MOUNTS)),
        'linux': json.loads(json.dumps(DEFAULT_LINUX)),
    }
    annotations = image_annotations(image.config, config)
    if annotations:
        spec['annotations'] = annotations
    return spec


class OCIBundleOutput(StagedImageOutput):
    """One image as an OCI runtime bundle (config.json + rootfs/)."""

    scheme = 'oci'

    def write(self, image):
        staged = self.stage(image)
        rootfs = os.path.join(staged, 'rootfs')
        os.mkdir(rootfs, 0o755)
        summary = extract.apply_layers(self.ctx, image.layers, rootfs,
                                       allow_devices=self.ctx.settings.allow_devices,
                                       what=image.reference)
        self.ctx.stats.add(nbytes=summary.bytes)
        spec = runtime_config(image, rootfs, self.ctx.warn)
        with open(os.path.join(staged, 'config.json'), 'w') as f:
            json.dump(spec, f, indent=2)
            f.write('\n')
