"""A real ``docker-credential-pass`` store: a gpg key and a ``pass`` password store made for one test or run.

``PassStore(workdir)`` creates a passphrase-less gpg key in a ``GNUPGHOME`` of its own and a ``pass`` store
(``PASSWORD_STORE_DIR``) encrypted to it, then ``store(server, user, secret)`` saves credentials with the helper's
own ``store`` command, as ``docker login`` would. ``env`` is the environment a process needs to read them back.
``stop()`` ends the gpg-agent the store started.
"""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tools.testbed.process import ServiceError

HELPER = 'docker-credential-pass'


def _run(args, env, input_bytes=None):
    result = subprocess.run(args, input=input_bytes, capture_output=True, env=env, timeout=120)
    if result.returncode != 0:
        raise ServiceError(f'{" ".join(args)} failed ({result.returncode}):\n'
                           f'{result.stderr.decode(errors="replace")}')
    return result


class PassStore:
    """gpg + pass + docker-credential-pass, isolated from the user's own keys and passwords."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # gpg-agent's socket lives in GNUPGHOME, whose path must stay short (a unix socket path has ~108 bytes).
        self.gnupg_home = Path(tempfile.mkdtemp(prefix='occy-gpg-'))
        self.store_dir = self.workdir / 'password-store'
        self.key_id = None

    @property
    def env(self):
        """os.environ with GNUPGHOME and PASSWORD_STORE_DIR pointing at this store."""
        env = dict(os.environ)
        env.update(GNUPGHOME=str(self.gnupg_home), PASSWORD_STORE_DIR=str(self.store_dir))
        return env

    def start(self):
        """Create the key and the store; returns self. Raises ServiceError when gpg, pass or the helper is missing."""
        for program in ('gpg', 'pass', HELPER):
            if shutil.which(program) is None:
                raise ServiceError(f'{program} is not installed (tools/bootstrap.sh installs gnupg, pass and '
                                   'golang-docker-credential-helpers)')
        os.chmod(self.gnupg_home, 0o700)
        _run(['gpg', '--batch', '--pinentry-mode', 'loopback', '--passphrase', '', '--quick-generate-key',
              'occystrap test <occystrap-test@invalid>', 'default', 'default', 'never'], self.env)
        listing = _run(['gpg', '--batch', '--with-colons', '--list-secret-keys'], self.env).stdout.decode()
        self.key_id = next(line.split(':')[9] for line in listing.splitlines() if line.startswith('fpr:'))
        _run(['pass', 'init', self.key_id], self.env)
        return self

    def store(self, server, username, secret):
        """Save credentials for ``server`` with ``docker-credential-pass store``."""
        payload = json.dumps({'ServerURL': server, 'Username': username, 'Secret': secret}).encode()
        _run([HELPER, 'store'], self.env, payload)

    def get(self, server):
        """What ``docker-credential-pass get`` answers for ``server`` (parsed), for checking a store."""
        return json.loads(_run([HELPER, 'get'], self.env, server.encode()).stdout)

    def stop(self):
        subprocess.run(['gpgconf', '--kill', 'gpg-agent'], env=self.env, capture_output=True, timeout=30)
        shutil.rmtree(self.gnupg_home, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
