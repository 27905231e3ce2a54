# The mlsys image: API server, feature loader and every CLI command, CPU only.
#   docker build -t mlsys .
#   docker compose up        (see docker-compose.yml: redis + feature loader + api)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1

WORKDIR /app

# CPU-only torch first, from PyTorch's CPU index: resolving it from PyPI would pull the CUDA
# build (several GB). The pyproject pin then finds it already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && python -c "import mlsys.cli; mlsys.cli.build_parser()"

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin mlsys
USER 10001:10001

EXPOSE 8000
# Liveness only (the process answers); readiness (Redis, features, model) is /readyz, which
# docker-compose.yml uses for the api service.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

CMD ["mlsys", "serve", "--model", "/models/ranknet", "--redis", "redis://redis:6379/0", \
     "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
