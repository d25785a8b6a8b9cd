# pubsub-gcs-worker image: deploy/deploy builds it with Cloud Build; locally: docker build .

# ---- build: the release binary, with the locked dependencies ----
# Bookworm, like the runtime's debian12: the binary links against this glibc. (rust:1.95 and
# rust:1.95-slim are trixie, whose newer glibc the runtime image does not have.)
FROM rust:1.95-bookworm AS build
WORKDIR /app

# Dependencies first, against stand-in sources, so this layer is reused until a manifest or
# Cargo.lock changes. Cargo wants the file of every target the manifest declares, so each gets a
# stand-in (`fn main() {}`): src/main.rs, src/lib.rs, and per [[bin]], [[bench]], [[example]] or
# [[test]] entry its `path`, else the file cargo looks for first. The workspace's test crate
# (testkit/) is only a dev-dependency: cargo reads its manifest, never builds it, so a stand-in
# library stays for both builds. The package's stand-ins go once the dependencies are built.
COPY Cargo.toml Cargo.lock ./
COPY testkit/Cargo.toml ./testkit/
RUN awk -F'"' \
        'function out() { if (dir) print (path ? path : dir "/" name ".rs"); dir = path = "" }; \
        /^\[/ { out() }; /^\[\[bin\]\]/ { dir = "src/bin" }; /^\[\[bench\]\]/ { dir = "benches" }; \
        /^\[\[example\]\]/ { dir = "examples" }; /^\[\[test\]\]/ { dir = "tests" }; \
        /^name *=/ { name = $2 }; /^path *=/ { path = $2 }; \
        END { out(); print "src/main.rs"; print "src/lib.rs" }' Cargo.toml > stand-ins \
 && while read -r file; do \
        mkdir -p "$(dirname "$file")" && echo 'fn main() {}' > "$file"; \
    done < stand-ins \
 && mkdir -p testkit/src && touch testkit/src/lib.rs \
 && cargo build --release --locked --bin pubsub-gcs-worker \
 && xargs rm -f < stand-ins && rm stand-ins

# The real sources the build needs: the crate (src/) and the benchmarks the manifest declares
# (benches/). Touch the crate's so cargo rebuilds it over the stand-ins' output even when the
# copied files carry older modification times.
COPY src ./src
COPY benches ./benches
RUN find src -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bin pubsub-gcs-worker

# ---- runtime: glibc and CA certificates, no shell, runs as the nonroot user (65532) ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /app/target/release/pubsub-gcs-worker /usr/local/bin/pubsub-gcs-worker
USER 65532:65532
# Exec form: the worker is PID 1 and receives Cloud Run's SIGTERM itself.
ENTRYPOINT ["/usr/local/bin/pubsub-gcs-worker"]
