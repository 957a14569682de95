# One image for both roles: `augment worker ...` (the Celery worker, needs torch) and every producer
# command (`augment train ...`, `augment watch ...`). The entrypoint is the `augment` CLI.
#
#   docker build -t gan-augment .
#   docker build -t gan-augment --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .
#   docker build -t gan-augment --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

# Where torch comes from. On GPU hosts the worker needs a CUDA build of torch: the default (PyPI) wheels for
# linux/x86_64 are CUDA builds; to pick a specific CUDA version use the PyTorch index, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 (it must match the host's driver).
# For a smaller CPU-only image use https://download.pytorch.org/whl/cpu.
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in its own layer, so code changes do not download it again. The requirements match the
# `worker` extra in pyproject.toml, which is kept loose on purpose so that the install below keeps this torch.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4" "torchvision>=0.19"

WORKDIR /src
COPY . /src
# The package with the `worker` extra (torch, torchvision): the same image runs producer and worker.
RUN pip install ".[worker]" \
    && useradd --create-home --uid 10001 augment

# Unprivileged at run time; relative paths (e.g. `augment fetch JOB --out results`) land in its home.
USER augment
WORKDIR /home/augment

# The container runs `augment <command>`: compose passes e.g. ["worker", "--queues", "train,generate"].
# `augment worker` execs celery in place, so celery is the process that receives SIGTERM (warm shutdown).
ENTRYPOINT ["augment"]
CMD ["--help"]
