"""The command line's contract: exit statuses, one-line errors, options from the environment."""

import os
import subprocess
import sys

import pytest


def occystrap(*args, env=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_help_lists_commands_and_global_options():
    result = occystrap('--help')
    assert result.returncode == 0
    for word in ('process', 'info', 'search', 'check', '--parallel', '--image-parallel', '--rate-limit',
                 '--layer-cache', '--no-http2', '--ca-cert', '--output-format'):
        assert word in result.stdout


def test_version():
    from occystrap import __version__
    result = occystrap('--version')
    assert result.returncode == 0 and __version__ in result.stdout


@pytest.mark.parametrize('args,fragment', [
    (['process', 'nonsense', 'tar:///tmp/x.tar'], 'is not a URI'),
    (['process', 'tar:///tmp/in.tar', 'quay://org'], "unknown destination scheme 'quay'"),
    (['process', 'tar:///tmp/in.tar', 'tar:///tmp/out.tar', '-f', 'bogus'], "unknown filter 'bogus'"),
    (['--parallel', '0', 'info', 'tar:///tmp/x.tar'], 'must be at least 1'),
    (['--no-such-option', 'info', 'tar:///tmp/x.tar'], 'No such option'),
    (['info'], 'Missing argument'),
    (['frobnicate'], 'No such command'),
])
def test_usage_errors_exit_2_with_one_line(args, fragment):
    result = occystrap(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ') and fragment in lines[0]
    assert 'Traceback' not in result.stderr


def test_options_come_from_environment():
    result = occystrap('info', 'tar:///tmp/x.tar', env={'OCCYSTRAP_PARALLEL': '0'})
    assert result.returncode == 2 and 'must be at least 1' in result.stderr


def test_password_never_echoed_in_errors():
    result = occystrap('process', 'registry://me:hunter2@BAD HOST/x', 'tar:///tmp/x.tar')
    assert result.returncode == 2
    assert 'hunter2' not in result.stderr and '***' in result.stderr


def test_missing_tarball_is_a_one_line_error(tmp_path):
    result = occystrap('process', 'tar://%s/absent.tar' % tmp_path, 'tar://%s/out.tar' % tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1
    assert 'absent.tar' in result.stderr
    assert os.listdir(tmp_path) == []


def test_everything_printed_reaches_a_pipe_before_the_command_exits():
    # The command exits without interpreter teardown (main.run); what it printed must still all arrive.
    expected = occystrap('--help').stdout
    assert expected
    reader = subprocess.Popen([sys.executable, '-c', 'import sys; print(len(sys.stdin.read()))'],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    writer = subprocess.Popen([sys.executable, '-m', 'occystrap', '--help'], stdout=reader.stdin)
    reader.stdin.close()
    assert writer.wait(timeout=60) == 0
    assert int(reader.stdout.read()) == len(expected)
    assert reader.wait(timeout=60) == 0


PROBE = """
import sys
import occystrap.main as entry

def main():
    import httpcore   # what every registry command imports
    assert sys.modules.get('anyio') is None   # httpcore's sync API runs without it
    print(sys.modules.get('h2') is not None, flush=True)
    sys.exit(3)

entry.main = main
sys.argv = ['occystrap'] + sys.argv[1:]
entry.run()
"""


@pytest.mark.parametrize('args,env,h2', [([], {}, 'False'), (['--http2'], {}, 'True'),
                                         ([], {'OCCYSTRAP_HTTP2': '1'}, 'True')])
def test_run_keeps_the_exit_status_and_imports_h2_only_for_http2(args, env, h2):
    result = subprocess.run([sys.executable, '-c', PROBE, *args], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, **env))
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == h2
