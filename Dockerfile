# CUDA runtime image for training, scoring and running the FCN nets on NVIDIA GPUs.
#
#   docker build -t fcn .
#   docker run --gpus all --rm fcn                                   # runs the tests
#   docker run --gpus all --rm -v "$PWD/data:/workspace/data" fcn \
#       python solve.py voc-fcn32s --gpu 0                            # trains a stage
#
# The PyTorch wheel brings its own CUDA libraries; the base image supplies the CUDA
# runtime environment and the container toolkit hook-up for the host driver.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /workspace
# Dependencies first (pinned in pyproject.toml) so code edits do not re-download torch.
COPY pyproject.toml README.md ./
COPY torchcaffe/__init__.py torchcaffe/__init__.py
RUN pip install -e ".[test]"
COPY . .
RUN pip install --no-deps -e ".[test]"

CMD ["python", "-m", "pytest", "-q"]
