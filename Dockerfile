# One image for every bridge process: web (uvicorn), runworker, runmqtt, runxmpp.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY project ./project
COPY bridge ./bridge
COPY protocols ./protocols
RUN pip install .
COPY manage.py ./

RUN useradd --system --uid 10001 bridge && \
    DEBUG=1 python manage.py collectstatic --noinput -v0
USER bridge
EXPOSE 8000
CMD ["uvicorn", "project.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off", "--ws-max-size", "1048576", "--proxy-headers"]
