# One image for every bridge process: web (uvicorn), runworker, runmqtt, runxmpp.
# Build stage: wheels for the project and its dependencies (compilers live here only).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN apt-get update -q && apt-get install -y -q --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY project ./project
COPY bridge ./bridge
COPY protocols ./protocols
# The dependencies only: the code itself runs from /app in the final image.
RUN python -m venv /venv && /venv/bin/pip install --upgrade pip && /venv/bin/pip install . \
    && /venv/bin/pip uninstall -y channels-bridge

# Final stage: the virtualenv, the code, collected static files; no compilers, not root.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/venv/bin:$PATH
WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app bridge
COPY --from=build /venv /venv
COPY manage.py ./
COPY project ./project
COPY bridge ./bridge
COPY protocols ./protocols
# Collected at build time into /app/staticfiles: containers write nothing at start.
RUN DEBUG=1 python manage.py collectstatic --noinput -v0 && chown -R root:root /app
USER bridge
EXPOSE 8000 9100
# SIGTERM reaches the process itself (exec form), which shuts down gracefully.
CMD ["python", "manage.py", "runweb", "0.0.0.0:8000", "--forwarded-allow-ips", "*"]
