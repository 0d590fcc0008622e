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


def test_first_install_says_what_it_installs_and_how_big():
    with open(str(ROOT / 'scripts' / 'venv.sh')) as f:
        text = f.read()
    assert 'torch 2.13.0' in text and '1.5 GB' in text and '| _setup_progress' in text
    assert '--quiet' not in text
