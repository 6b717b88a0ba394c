# syntax=docker/dockerfile:1
# switchboard container image: a build stage, then a runtime stage with only the shared
# libraries the two binaries link (tests/integration/test_deploy_artifacts.py checks that
# list against `ldd`), running as a non-root user.
#
#   docker build -t switchboard .
#   docker run --rm -p 8080:8080 -e SWITCHBOARD_REDIS=redis://redis-host:6379 \
#     -v $PWD/admin-token:/run/secrets/admin_token:ro switchboard
#
# Every flag is also an environment variable (SWITCHBOARD_<FLAG>); the admin token is
# read from the file SWITCHBOARD_ADMIN_TOKEN_FILE names (a Docker/Kubernetes secret).

FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config libevent-dev libnghttp2-dev libjansson-dev \
      libhiredis-dev libssl-dev libhttp-parser-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile LICENSE CHANGELOG.md README.md ./
COPY include include
COPY src src
COPY man man
COPY deploy/systemd deploy/systemd
RUN make -j"$(nproc)" all \
 && make install PREFIX=/usr DESTDIR=/out \
 && rm -rf /out/usr/lib/systemd /out/etc

FROM debian:bookworm-slim
# Runtime libraries of bin/switchboard and bin/sbctl; ca-certificates for https agents.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libevent-2.1-7 libevent-core-2.1-7 libevent-pthreads-2.1-7 libevent-openssl-2.1-7 \
      libnghttp2-14 \
      libjansson4 libhiredis0.14 libssl3 libhttp-parser2.9 libcurl4 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin switchboard
COPY --from=build /out/ /
USER 10001:10001
ENV SWITCHBOARD_LISTEN=0.0.0.0:8080 \
    SWITCHBOARD_ADMIN_TOKEN_FILE=/run/secrets/admin_token \
    SWITCHBOARD_URL=http://127.0.0.1:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
# Ready = /readyz answers 200 (Redis connected, registry replica loaded): `sbctl health`
# exits 0 only then. It reads SWITCHBOARD_URL; change that too if you move the listener.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["sbctl", "--timeout", "3", "health"]
ENTRYPOINT ["switchboard"]
