# syntax=docker/dockerfile:1
# fhirbox container image: build the release binary, ship it alone on a
# distroless base (glibc, CA certificates, no shell), as a numeric non-root user.
# Works with a read-only root filesystem: the only writable path fhirbox needs
# is the SQLite directory, /var/lib/fhirbox, which should be a volume.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not refetch crates.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY bench bench
RUN cargo build --release --locked -p fhirbox-server \
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
