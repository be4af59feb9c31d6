#!/bin/sh
# check-base IMAGE [ALLOW]: succeed if IMAGE is pinned by digest (name[:tag]@sha256:<64 hex>);
# otherwise fail, or only warn when ALLOW is "true" (a local build, never a release).
# Run by the Dockerfiles' builder stages on their base's build argument (k8s/README.md, Images).
set -eu
image=${1:?usage: check-base IMAGE [ALLOW]}
allow=${2:-false}
if printf '%s\n' "$image" | grep -Eq '@sha256:[0-9a-f]{64}$'; then
    echo "check-base: $image"
    exit 0
fi
if [ "$allow" = true ]; then
    echo "check-base: WARNING: $image is not pinned by digest (ALLOW_UNPINNED_BASE=true): not a release build" >&2
    exit 0
fi
echo "check-base: $image is not pinned by digest. Pass --build-arg <ARG>=$image@sha256:<digest>" \
    "(k8s/README.md, Images), or ALLOW_UNPINNED_BASE=true for a local build." >&2
exit 1
