"""The install files say what the README promises: pinned deps, Docker steps, CI command."""
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def dockerfile_instructions():
    """Parse the Dockerfile into (INSTRUCTION, argument) pairs, joining continuations."""
    text = (ROOT / 'Dockerfile').read_text()
    text = re.sub(r'\\\n', ' ', text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            word, _, rest = line.partition(' ')
            out.append((word.upper(), rest.strip()))
    return out


def test_every_runtime_dependency_is_pinned_exactly():
    deps = pyproject()['project']['dependencies']
    names = {re.split(r'[=<>!~]', d)[0].lower() for d in deps}
    assert {'torch', 'numpy', 'scipy', 'pillow', 'h5py', 'protobuf'} <= names
    for dep in deps + pyproject()['project']['optional-dependencies']['test']:
        assert '==' in dep, 'not pinned: %s' % dep
    assert 'torch==2.13.0' in deps


def test_dockerfile_starts_from_a_cuda_runtime_image():
    instr = dockerfile_instructions()
    assert instr[0][0] == 'FROM'
    image = instr[0][1]
    assert image.startswith('nvidia/cuda:') and 'runtime' in image, image


def test_dockerfile_installs_python311_and_the_pinned_project():
    runs = ' '.join(arg for word, arg in dockerfile_instructions() if word == 'RUN')
    assert 'python3.11' in runs and 'python3.11-venv' in runs
    # The project is installed from pyproject.toml, so the image gets the same pins.
    assert re.search(r'pip install (-e )?"?\.\[test\]"?', runs), runs
    copies = [arg for word, arg in dockerfile_instructions() if word == 'COPY']
    assert any(arg.split()[0] == 'pyproject.toml' for arg in copies)
    assert any(arg == '. .' for arg in copies)


def test_dockerfile_default_command_runs_the_tests():
    cmds = [arg for word, arg in dockerfile_instructions() if word == 'CMD']
    assert len(cmds) == 1
    assert 'pytest' in cmds[0]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'bash run_tests.sh' in readme and 'bash run_demo.sh' in readme
    ci_cmds = [shlex.split(line) for line in ci.splitlines()
               if line.strip() and not line.lstrip().startswith('#')]
    assert ['bash', 'run_tests.sh'] in ci_cmds


def test_readme_tells_how_to_train_inside_docker_with_gpus():
    readme = (ROOT / 'README.md').read_text()
    assert 'docker build' in readme
    assert re.search(r'docker run --gpus all .*solve\.py', readme)


PIP_OUTPUT = '''Obtaining file:///work/main
Collecting torch==2.13.0 (from torchcaffe-fcn==0.1.0)
  Downloading torch-2.13.0-cp311-none-linux_x86_64.whl (750.2 MB)
Collecting numpy==2.4.6 (from torchcaffe-fcn==0.1.0)
  Using cached numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl (16.6 MB)
Installing collected packages: numpy, torch
Successfully installed numpy-2.4.6 torch-2.13.0
ERROR: pip's dependency resolver does not currently take into account
'''


def test_first_install_shows_one_line_per_package_with_download_sizes_and_errors():
    script = str(ROOT / 'scripts' / 'venv.sh')
    shell = ('set -euo pipefail; eval "$(sed -n \'/^_setup_progress()/,/^}/p\' %s)"; '
             '_setup_progress' % script)
    done = subprocess.run(['bash', '-c', shell], input=PIP_OUTPUT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.splitlines() == [
        '[setup] 1 obtaining file:///work/main',
        '[setup] 2 collecting torch==2.13.0 (from torchcaffe-fcn==0.1.0)',
        '[setup]   downloading torch-2.13.0-cp311-none-linux_x86_64.whl (750.2 MB)',
        '[setup] 3 collecting numpy==2.4.6 (from torchcaffe-fcn==0.1.0)',
        '[setup] unpacking 2 packages into .venv (torch, the largest, is ~750 MB: a minute or '
        'more) ...',
        '[setup] done: installed numpy-2.4.6 torch-2.13.0',
    ]
    assert done.stderr.startswith('ERROR: pip')


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3.11: '-m venv DIR' makes DIR/bin/python, a copy of this script,
# whose '-m pip install ...' records its arguments and prints pip's output.
set -e
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
elif [ "$1 $2 $3" = "-m pip install" ]; then
    echo "$@" >> "$(dirname "$0")/../pip-calls"
    cat "$(dirname "$0")/../../pip-output"
fi
"""


def test_first_install_says_what_it_installs_and_how_big(tmp_path):
    # venv.sh run for real in a copy of the project's set-up files, with a stand-in
    # Python: the first run announces the install before pip starts, the second is silent.
    (tmp_path / 'scripts').mkdir()
    (tmp_path / 'scripts' / 'venv.sh').write_text((ROOT / 'scripts' / 'venv.sh').read_text())
    (tmp_path / 'scripts' / 'system_deps.sh').write_text('')  # not under test (apt-get)
    (tmp_path / 'pyproject.toml').write_text((ROOT / 'pyproject.toml').read_text())
    (tmp_path / 'pip-output').write_text(PIP_OUTPUT)
    python = tmp_path / 'python3.11'
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {'PATH': '/usr/bin:/bin', 'PYTHON': str(python), 'HOME': str(tmp_path)}

    def setup():
        done = subprocess.run(['bash', '-c', 'source scripts/venv.sh'], cwd=tmp_path,
                              env=env, capture_output=True, text=True, check=True)
        return done.stdout.splitlines()
    lines = setup()
    torch_pin = next(d for d in pyproject()['project']['dependencies']
                     if d.startswith('torch=='))
    assert lines[0] == '[setup] creating virtual environment in %s/.venv with %s' % (
        tmp_path, python)
    announce = lines[1:4]
    assert announce[0] == ('[setup] installing pinned dependencies into .venv (pip install '
                           '-e .[test]): torch %s' % torch_pin.split('==')[1])
    assert '~750 MB installed' in announce[1] and 'about 1.5 GB in all' in announce[2]
    assert lines[4] == '[setup] 1 obtaining file:///work/main'  # then pip's progress
    assert lines[-1] == '[setup] done: installed numpy-2.4.6 torch-2.13.0'
    calls = (tmp_path / '.venv' / 'pip-calls').read_text().splitlines()
    assert len(calls) == 1 and '--progress-bar off' in calls[0] and '--quiet' not in calls[0]
    assert calls[0].endswith('-e %s[test]' % tmp_path)
    assert setup() == []  # installed: nothing to say, nothing run
    assert len((tmp_path / '.venv' / 'pip-calls').read_text().splitlines()) == 1
