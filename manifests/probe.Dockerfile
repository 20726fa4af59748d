# The probe image: the probe binary alone (it embeds the TC program and the
# filter module). Build the binary first with `cargo xtask build --release`, then:
#   docker build -f manifests/probe.Dockerfile -t ghcr.io/apitrace/apitrace-probe:0.1.0 target/release
FROM gcr.io/distroless/cc-debian12
COPY apitrace-probe /apitrace-probe
# Root in the container, with only the capabilities the pod spec adds: entering
# other pods' network namespaces and attaching BPF need them.
USER 0
ENTRYPOINT ["/apitrace-probe"]
