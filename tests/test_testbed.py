"""The test bed itself (tools/testbed): what the benchmark asks of its registries, and who imports whom."""

import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tools.testbed import Registry, ServiceError, free_port, probe_registry, write_tls_material

ROOT = Path(__file__).resolve().parents[1]


def _imports(path):
    return re.findall(r'^\s*(?:from|import)\s+([\w.]+)', path.read_text(), re.MULTILINE)


def test_tools_never_import_from_tests():
    offenders = {str(p.relative_to(ROOT)): m for p in (ROOT / 'tools').rglob('*.py')
                 for m in _imports(p) if m == 'tests' or m.startswith('tests.')}
    assert offenders == {}


def test_test_modules_import_helpers_not_other_test_modules():
    offenders = {str(p.relative_to(ROOT)): m for p in (ROOT / 'tests').glob('*.py')
                 for m in _imports(p) if m.startswith('tests.test_')}
    assert offenders == {}


@pytest.mark.integration
def test_registries_share_one_ca_and_keep_their_own_files(tmp_path):
    tls = write_tls_material(tmp_path / 'tls')
    with Registry(tmp_path, tls=tls, name='registry-a', storage_dir=tmp_path / 'store-a', log_level='warn') as a, \
            Registry(tmp_path, tls=tls, name='registry-b', storage_dir=tmp_path / 'store-b', log_level='warn') as b:
        context = ssl.create_default_context(cafile=str(tls['ca']))
        for registry in (a, b):
            assert registry.ca_path == tls['ca'] and registry.cert_dir == tls['cert_dir']
            assert httpx.get(f'{registry.url}/v2/', verify=context).status_code == 200
        assert a.port != b.port
        assert (tmp_path / 'registry-a.json').is_file() and (tmp_path / 'registry-b.json').is_file()
        assert a.log_path == tmp_path / 'registry-a.log' and b.log_path == tmp_path / 'registry-b.log'
        assert (tmp_path / 'store-a').is_dir() and (tmp_path / 'store-b').is_dir()
        # warn keeps distribution's info lines out, but the access log (benchmark.sh counts protocols in it) stays.
        assert 'level=info' not in a.log
        assert [e for e in a.access_log() if e.path == '/v2/' and e.status == 200]


@pytest.mark.integration
def test_probe_goes_past_a_proxy_the_environment_names(registry, monkeypatch):
    # A proxy nobody listens on: a probe that used it would fail.
    monkeypatch.setenv('http_proxy', f'http://127.0.0.1:{free_port()}')
    monkeypatch.setenv('HTTP_PROXY', f'http://127.0.0.1:{free_port()}')
    monkeypatch.delenv('no_proxy', raising=False)
    monkeypatch.delenv('NO_PROXY', raising=False)
    assert probe_registry(registry.url)
    assert not probe_registry(f'http://127.0.0.1:{free_port()}')


@pytest.mark.integration
def test_a_registry_that_dies_with_its_parent_does(tmp_path):
    script = ('import sys, time\n'
              'from tools.testbed import Registry\n'
              'reg = Registry(sys.argv[1], die_with_parent=True).start()\n'
              'print(reg.url, flush=True)\n'
              'time.sleep(600)\n')
    parent = subprocess.Popen([sys.executable, '-c', script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        url = parent.stdout.readline().strip()
        assert url.startswith('http://127.0.0.1:') and probe_registry(url), url
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15       # generous: only proves the registry does not outlive its parent
    while probe_registry(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not probe_registry(url), 'the registry outlived the process that started it'


def test_unknown_auth_is_refused(tmp_path):
    with pytest.raises(ValueError):
        Registry(tmp_path, auth='kerberos')
    assert issubclass(ServiceError, RuntimeError)     # bench_env.py reports RuntimeErrors as one line
