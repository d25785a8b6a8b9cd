# pubsub-gcs-worker image: deploy/deploy builds it with Cloud Build; locally: docker build .

# ---- build: the release binary, with the locked dependencies ----
# Bookworm, like the runtime's debian12: the binary links against this glibc. (rust:1.95 and
# rust:1.95-slim are trixie, whose newer glibc the runtime image does not have.)
FROM rust:1.95-bookworm AS build
WORKDIR /app

# Dependencies first, against stand-in sources, so this layer is reused until Cargo.toml or
# Cargo.lock changes. The workspace's test crate (testkit/) is only a dev-dependency: cargo reads
# its manifest, never builds it, so a stand-in library stays for both builds.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml ./testkit/
RUN mkdir -p src testkit/src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs testkit/src/lib.rs \
 && cargo build --release --locked --bin pubsub-gcs-worker \
 && rm -rf src

# The real sources. Touch them so cargo rebuilds the crate over the stand-in's output even when
# the copied files carry older modification times.
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin pubsub-gcs-worker

# ---- runtime: glibc and CA certificates, no shell, runs as the nonroot user (65532) ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /app/target/release/pubsub-gcs-worker /usr/local/bin/pubsub-gcs-worker
USER 65532:65532
# Exec form: the worker is PID 1 and receives Cloud Run's SIGTERM itself.
ENTRYPOINT ["/usr/local/bin/pubsub-gcs-worker"]
