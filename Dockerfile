# The gateway image: `docker build -t chat-gateway .`
# One process per container; configure it with CHAT_* variables (chat-gateway --help).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs; tests, benchmarks and deploy files stay out.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install . \
    && rm -rf /src

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin chat
USER 10001:10001
WORKDIR /

# Listen on every interface inside the container; JSON logs on stdout.
ENV CHAT_LISTEN=0.0.0.0:7000 \
    CHAT_HTTP_LISTEN=0.0.0.0:8000 \
    CHAT_LOG_FORMAT=json

# 7000: chat (raw TCP, PROXY protocol if CHAT_PROXY_PROTOCOL=true)
# 8000: HTTP /healthz (liveness), /readyz (readiness), /metrics (Prometheus)
EXPOSE 7000 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# SIGTERM starts the graceful drain (CHAT_DRAIN_TIMEOUT_S, default 10 s): give the
# container longer than that to stop (compose: stop_grace_period; k8s:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
CMD ["chat-gateway"]
