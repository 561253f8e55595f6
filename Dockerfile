# One image for every Inbox process; docker-compose.yml picks the command per service
# (`inbox api`, `inbox relay`, `inbox worker`; also `inbox migrate`, `inbox replay`, `inbox token`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --create-home --home-dir /var/lib/inbox --uid 10001 inbox

# The working directory must be writable: Faust keeps `<INBOX_WORKER_GROUP>-data/` here, and
# `.env` is looked up here (none is baked into the image; see .dockerignore).
USER inbox
WORKDIR /var/lib/inbox

ENV INBOX_HTTP_HOST=0.0.0.0 \
    INBOX_HTTP_PORT=8000 \
    INBOX_DATA_DIR=/var/lib/inbox/.inbox

EXPOSE 8000
CMD ["inbox", "api"]
