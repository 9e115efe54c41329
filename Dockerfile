# Build: docker build -t docmirror .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY layouts ./layouts
COPY indexes ./indexes
RUN cargo build --release --locked --bin docmirror

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin docmirror
COPY --from=build /src/target/release/docmirror /usr/local/bin/docmirror
USER docmirror
ENV DOCMIRROR_LOG_FORMAT=json
ENTRYPOINT ["docmirror"]
CMD ["watch"]
