# Multi-stage: a static carve-csi on a small Debian runtime with the storage tools.
# Without a Docker engine, hack/image/build.sh builds the same image (`make image`).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -ldflags "-s -w -X main.version=${VERSION}" -o /carve-csi ./cmd/carve-csi

FROM debian:bookworm-slim
# The package list (deploy/image/packages.txt) and what is removed again (deploy/image/prune.sh)
# are shared with hack/image/build.sh, so the two images cannot drift.
COPY deploy/image/packages.txt deploy/image/prune.sh /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(sed 's/#.*//' /tmp/packages.txt) \
 && sh /tmp/prune.sh / \
 && rm -f /tmp/packages.txt /tmp/prune.sh
# No udev and no metadata backups inside the container; see the file for why.
COPY deploy/image/lvm.conf /etc/lvm/lvm.conf
COPY --from=build /carve-csi /usr/local/bin/carve-csi
ENTRYPOINT ["/usr/local/bin/carve-csi"]
