# Sourced by scripts/compose-smoke and scripts/swarm-smoke (which define log and fail):
# the local base images (scripts/local-base-image), then the project's image and the
# pooler's on top of them. Sets IMAGE, POOLER, PYTORCH_IMAGE, LOCAL_POSTGRES_IMAGE.
build_smoke_images() {
    local names debian logs=${TMPDIR:-/tmp}
    log "local base images (cached after the first build)"
    names=$(scripts/local-base-image all) || fail "building the local base images failed"
    PYTORCH_IMAGE=$(sed -n 's/^PYTORCH_IMAGE=//p' <<<"$names")
    LOCAL_POSTGRES_IMAGE=$(sed -n 's/^POSTGRES_IMAGE=//p' <<<"$names")
    debian=$(sed -n 's/^DEBIAN_IMAGE=//p' <<<"$names")
    [[ -n "$PYTORCH_IMAGE" && -n "$LOCAL_POSTGRES_IMAGE" && -n "$debian" ]] \
        || fail "local-base-image printed no image names"

    IMAGE=hpsearch-local/hpsearch:smoke
    log "building $IMAGE from ./Dockerfile with BASE_IMAGE=$PYTORCH_IMAGE"
    docker build --build-arg BASE_IMAGE="$PYTORCH_IMAGE" -t "$IMAGE" . >"$logs/hpsearch-smoke-build.log" 2>&1 \
        || { tail -40 "$logs/hpsearch-smoke-build.log" >&2; fail "docker build failed (log $logs/hpsearch-smoke-build.log)"; }

    POOLER=hpsearch-local/pgbouncer:smoke
    log "building $POOLER from deploy/pgbouncer with DEBIAN_IMAGE=$debian"
    docker build --build-arg DEBIAN_IMAGE="$debian" -t "$POOLER" deploy/pgbouncer >"$logs/hpsearch-smoke-pooler.log" 2>&1 \
        || { tail -40 "$logs/hpsearch-smoke-pooler.log" >&2; fail "building the pooler image failed"; }
}
