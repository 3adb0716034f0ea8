# The example application (examples/fastapi_app.py) on covey, for the Helm chart
# in deploy/helm/covey. Build from the repository root:
#   docker build -t covey-example:0.1.0 .
# Web pods run uvicorn (the default command); worker pods run
# `covey serve-metrics examples.fastapi_app:cluster`; the migration Job runs
# `covey migrate`. See docs/deploy.md.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src
# covey itself, and what the example app needs on top (dev extras of covey)
RUN /opt/venv/bin/pip install . "fastapi==0.165.0" "uvicorn==0.55.0"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples ./examples
USER 10001:10001
EXPOSE 8000 7400 9100
# The liveness probe's endpoint (never the database); Kubernetes uses its own
# probes from the chart, this one serves `docker run` and Compose.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2).status != 200)"]
CMD ["uvicorn", "examples.fastapi_app:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "30"]
