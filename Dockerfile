# scimlog in a container: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t scimlog .
#   scimlog keys generate ./master.key && sudo chown 10001 master.key   # the image's user reads it
#   docker run -d -p 8080:8080 -v scimlog-data:/data \
#     -v "$PWD/master.key:/run/secrets/scimlog-master-key:ro" scimlog
#   docker exec <container> scimlog token create --name okta --data-dir /data
# The master key is mounted apart from the data volume: a copy of the volume alone cannot open
# the personal values in the log.

FROM rust:1.95-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-dev g++ make git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin scimlog \
 && install -m 0755 target/release/scimlog /usr/local/bin/scimlog

FROM debian:bookworm-slim
# RocksDB is C++: the runtime needs libstdc++.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libstdc++6 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin scimlog \
 && install -d -o scimlog -g scimlog -m 0700 /data
COPY --from=build /usr/local/bin/scimlog /usr/local/bin/scimlog
ENV SCIMLOG_LISTEN=0.0.0.0:8080 \
    SCIMLOG_DATA_DIR=/data \
    SCIMLOG_MASTER_KEY_FILE=/run/secrets/scimlog-master-key \
    SCIMLOG_LOG_FORMAT=json
USER scimlog
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/scimlog", "healthcheck", "--url", "http://127.0.0.1:8080"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/scimlog"]
CMD ["serve"]
