"""Numeric and boolean global options, from the command line and from OCCYSTRAP_* variables, run as the real command.

Non-finite and absurd values are usage errors (exit 2, one line); from a variable, the line names the variable.
"""

import os
import subprocess
import sys

import pytest

OPTIONS = {
    # option: (variable, values refused, values taken, what the error says)
    '--parallel': ('OCCYSTRAP_PARALLEL', ['0', '-1', '257', '1e3', '2.5', 'nan', 'inf', 'abc', ''], ['1', '256'],
                   'must be at least 1 and at most 256'),
    '--image-parallel': ('OCCYSTRAP_IMAGE_PARALLEL', ['0', '100000', 'nan', '-inf', '3.0'], ['1', '256'],
                         'must be at least 1 and at most 256'),
    '--rate-limit': ('OCCYSTRAP_RATE_LIMIT', ['nan', 'NaN', 'inf', '-inf', '1e-9', '0', '-5', '1e300', 'fast'],
                     ['0.01', '2.5', '100000'], 'must be a finite number between 0.01 and 100000'),
    '--retries': ('OCCYSTRAP_RETRIES', ['-1', '21', 'nan', '1e9', 'twice'], ['0', '20'],
                  'must be at least 0 and at most 20'),
}
BOOLEANS = ['OCCYSTRAP_INSECURE', 'OCCYSTRAP_HTTP2', 'OCCYSTRAP_VERBOSE', 'OCCYSTRAP_ALLOW_DEVICES']


def occystrap(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith('OCCYSTRAP_')}
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def missing(tmp_path):
    return 'tar://%s' % (tmp_path / 'absent.tar')


def one_error_line(result):
    assert 'Traceback' not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('error: ')
    return lines[0]


@pytest.mark.parametrize('option,value', [(o, v) for o, spec in OPTIONS.items() for v in spec[1]])
def test_refused_values_on_the_command_line(option, value, tmp_path):
    result = occystrap('%s=%s' % (option, value), 'info', missing(tmp_path))
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert OPTIONS[option][3] in line and option in line


@pytest.mark.parametrize('option,value', [(o, v) for o, spec in OPTIONS.items() for v in spec[1] if v])
def test_refused_values_from_the_environment_name_the_variable(option, value, tmp_path):
    variable = OPTIONS[option][0]
    result = occystrap('info', missing(tmp_path), env={variable: value})
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith('error: %s=%s: %s %s' % (variable, value, option, OPTIONS[option][3]))


@pytest.mark.parametrize('option,value', [(o, v) for o, spec in OPTIONS.items() for v in spec[2]])
def test_taken_values_reach_the_command(option, value, tmp_path):
    # The command runs and fails for the reason that has nothing to do with the option: the tarball is absent.
    for result in (occystrap('%s=%s' % (option, value), 'info', missing(tmp_path)),
                   occystrap('info', missing(tmp_path), env={OPTIONS[option][0]: value})):
        assert result.returncode == 1, result.stderr
        assert 'does not exist' in one_error_line(result)


def test_a_tiny_rate_limit_is_refused_at_once_rather_than_hanging(tmp_path):
    # 1e-9 requests a second would wait some 30 years for the second request.
    result = occystrap('--rate-limit', '1e-9', 'info', 'registry://127.0.0.1:1/x:y')
    assert result.returncode == 2 and '--rate-limit' in one_error_line(result)


@pytest.mark.parametrize('variable', BOOLEANS)
@pytest.mark.parametrize('value', ['maybe', '2', 'yes please', 'tru'])
def test_boolean_variables_with_junk_values_are_usage_errors(variable, value, tmp_path):
    result = occystrap('info', missing(tmp_path), env={variable: value})
    assert result.returncode == 2, result.stderr
    option = '--' + variable[len('OCCYSTRAP_'):].lower().replace('_', '-')
    assert one_error_line(result) == 'error: %s=%s: %s must be true or false (1/0, yes/no, on/off)' % (
        variable, value, option)


@pytest.mark.parametrize('value', ['0', 'false', 'no', 'off', '1', 'true', 'YES', 'on'])
def test_boolean_variables_take_the_usual_words(value, tmp_path):
    result = occystrap('info', missing(tmp_path), env={'OCCYSTRAP_INSECURE': value})
    assert result.returncode == 1 and 'does not exist' in one_error_line(result)


def test_a_control_character_in_a_variable_is_shown_escaped(tmp_path):
    result = occystrap('info', missing(tmp_path), env={'OCCYSTRAP_RETRIES': '\x1b[31m3'})
    assert result.returncode == 2
    line = one_error_line(result)
    assert '\x1b' not in line and "OCCYSTRAP_RETRIES='\\x1b[31m3'" in line
