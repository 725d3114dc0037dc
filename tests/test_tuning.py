"""Dependency adjustments: applied once from the command line, only to the versions they were written for.

If a test here fails after an upgrade of h11, httpcore or the C library, the installed version is outside the range
an adjustment was checked against: check occystrap/tuning.py against the new version, then move its range (and the
pin in setup.cfg) in the same commit.
"""

import configparser
import importlib.metadata
import os
import subprocess
import sys

import pytest

from occystrap import tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    environ.update(env)
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, env=environ,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _pins():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, 'setup.cfg'))
    lines = [line.strip() for line in parser['options']['install_requires'].splitlines() if line.strip()]
    return {line.split('<')[0]: line.split('<', 1)[1] for line in lines if '<' in line}


@pytest.mark.parametrize('name, versions', [('h11', tuning.H11_VERSIONS), ('httpcore', tuning.HTTPCORE_VERSIONS)])
def test_installed_http_libraries_are_the_versions_the_adjustments_were_written_for(name, versions):
    installed = importlib.metadata.version(name)
    module = __import__(name)
    assert tuning.in_range(installed, versions), (
        '%s %s is outside %r: check occystrap/tuning.py against it, then move the range and setup.cfg' %
        (name, installed, versions))
    # The guard reads the imported module's own version; it must be the distribution that is installed.
    assert module.__version__ == installed
    # setup.cfg keeps the upgrade deliberate: its upper bound is the end of the range.
    assert tuning.version_tuple(_pins()[name]) == versions[1]


def test_installed_glibc_is_in_the_allocator_tunings_range():
    version = tuning.glibc_version()
    assert version.startswith('glibc '), 'these tests expect glibc (Debian); other C libraries are left alone'
    assert tuning.in_range(version, tuning.GLIBC_VERSIONS), version


def test_version_ranges_include_the_low_end_only():
    assert tuning.version_tuple('0.16.0rc1') == (0, 16, 0)
    assert tuning.version_tuple('glibc 2.36') == (2, 36)
    assert tuning.in_range('0.16.0', ((0, 16), (0, 17))) and tuning.in_range('0.16.9', ((0, 16), (0, 17)))
    assert not tuning.in_range('0.17.0', ((0, 16), (0, 17)))
    assert not tuning.in_range('0.15.9', ((0, 16), (0, 17)))
    assert not tuning.in_range('', ((0, 16), (0, 17))) and not tuning.in_range('unknown', ((0, 16), (0, 17)))


IN_PROCESS_COMMAND = '''
import sys
from occystrap import main, streams
sys.modules['h2'] = None   # as the occystrap command does
try:
    main.main(['info', 'tar:///nonexistent/occystrap-tuning-test.tar'])
except SystemExit as e:
    print('exit', e.code)
print('httpcore-imported', 'httpcore' in sys.modules)
print('allocator', streams._allocator_tuned)
import httpx, httpcore
from h11._receivebuffer import ReceiveBuffer
print('read', httpcore.HTTP11Connection.READ_NUM_BYTES)
print('lean', getattr(ReceiveBuffer, '_occystrap_lean', False))
'''


def test_main_applies_the_adjustments_in_process_and_httpcore_stays_unimported_until_needed():
    out = _python(IN_PROCESS_COMMAND)
    assert out == ['exit', '1', 'httpcore-imported', 'False', 'allocator', 'True',
                   'read', str(tuning.READ_SIZE), 'lean', 'True']


WITHOUT_MAIN = '''
import httpx, httpcore
from h11._receivebuffer import ReceiveBuffer
from occystrap.registry.http import HttpClient
from occystrap.settings import Settings
HttpClient(Settings()).close()
print(httpcore.HTTP11Connection.READ_NUM_BYTES, getattr(ReceiveBuffer, '_occystrap_lean', False))
'''


def test_the_http_client_itself_adjusts_nothing():
    assert _python(WITHOUT_MAIN) == ['65536', 'False']


OTHER_VERSIONS = '''
import h11, httpcore
h11.__version__ = '0.17.0'
httpcore.__version__ = '1.1.0'
from h11._receivebuffer import ReceiveBuffer
from occystrap import tuning
tuning.apply()
print(httpcore.HTTP11Connection.READ_NUM_BYTES, getattr(ReceiveBuffer, '_occystrap_lean', False))
'''


def test_versions_outside_the_ranges_are_left_alone():
    assert _python(OTHER_VERSIONS) == ['65536', 'False']


OTHER_GLIBC = '''
import os, sys
os.confstr = lambda name: 'glibc 3.0' if name == 'CS_GNU_LIBC_VERSION' else None
from occystrap import streams
streams.tune_allocator()
print(streams._allocator_tuned, 'ctypes' in sys.modules)
'''


def test_an_unexpected_glibc_keeps_its_allocator_defaults():
    # mallopt is reached through ctypes, which nothing else here imports: its absence means it was not called.
    assert _python(OTHER_GLIBC) == ['True', 'False']


def test_adjust_http_reports_what_it_applied():
    assert tuning.adjust_http() == ['large_reads', 'lean_body_reads']
    import httpcore
    assert httpcore.HTTP11Connection.READ_NUM_BYTES == tuning.READ_SIZE
