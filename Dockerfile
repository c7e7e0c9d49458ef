# syntax=docker/dockerfile:1
# fhirbox container image: build the release binary, ship it alone on a
# distroless base (glibc, CA certificates, no shell), as a numeric non-root user.
# Works with a read-only root filesystem: the only writable path fhirbox needs
# is the SQLite directory, /var/lib/fhirbox, which should be a volume.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first: the manifests of every workspace member with empty stand-in
# sources (each target a manifest names must exist), built once. This layer, every
# crates.io dependency fetched and compiled, is reused until Cargo.toml or Cargo.lock
# changes; a source edit rebuilds only fhirbox's own crates below. A new workspace
# member needs its COPY line and stand-in here (scripts/validate-deploy.sh checks it).
COPY Cargo.toml Cargo.lock ./
COPY crates/json/Cargo.toml crates/json/
COPY crates/fhir/Cargo.toml crates/fhir/
COPY crates/secrets/Cargo.toml crates/secrets/
COPY crates/store/Cargo.toml crates/store/
COPY crates/auth/Cargo.toml crates/auth/
COPY crates/subscriptions/Cargo.toml crates/subscriptions/
COPY crates/validation/Cargo.toml crates/validation/
COPY crates/rest/Cargo.toml crates/rest/
COPY crates/server/Cargo.toml crates/server/
COPY crates/test-support/Cargo.toml crates/test-support/
COPY bench/Cargo.toml bench/
RUN for member in crates/json crates/fhir crates/secrets crates/store crates/auth crates/subscriptions crates/validation crates/rest crates/server crates/test-support bench; do \
      mkdir -p "$member/src" && touch "$member/src/lib.rs"; \
    done \
 && echo 'fn main() {}' > crates/server/src/main.rs \
 && mkdir -p crates/secrets/tests/integration bench/benches \
 && touch crates/secrets/tests/integration/main.rs crates/secrets/tests/log_leaks.rs \
 && echo 'fn main() {}' > bench/benches/micro.rs \
 && cargo build --release --locked -p fhirbox-server \
 && rm -rf crates bench
# Then the real sources. COPY keeps their modification times, which can be older than
# the stand-ins' build, and cargo rebuilds a workspace crate only when a source file is
# newer than its last build: touch them so the real code is always compiled.
COPY crates crates
COPY bench bench
RUN find crates bench -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p fhirbox-server \
 && install -D -m 0755 target/release/fhirbox /out/fhirbox \
 && install -d -m 0755 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/fhirbox /usr/local/bin/fhirbox
COPY --from=build --chown=65532:65532 /out/data /var/lib/fhirbox
USER 65532:65532
ENV BOX_WEB_PORT=8080 \
    BOX_DB_URL=sqlite:/var/lib/fhirbox/fhirbox.db \
    BOX_LOG_FORMAT=json
VOLUME ["/var/lib/fhirbox"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/fhirbox"]
CMD ["serve"]
