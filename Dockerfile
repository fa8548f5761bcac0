# One ledger node. Configuration comes from a folder made by `ledger cluster init`,
# mounted read-only at /cluster; the node's store lives in the /data volume.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ledger ./ledger
COPY node ./node
RUN pip install --no-cache-dir '.[node]' && useradd --system --home /data ledger \
    && mkdir -p /data && chown ledger /data
USER ledger
VOLUME ["/data"]
EXPOSE 8000 8100
ENTRYPOINT ["ledger"]
