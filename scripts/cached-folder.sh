# Sourced by the fetch scripts: a model folder in $CACHE made once per content hash.
#
#   cached_folder NAME HASH BUILD    # prints $CACHE/NAME on fd 3
#
# When $CACHE/NAME/.complete does not hold HASH (a changed exporter, pin set or script), runs
# `BUILD DIR` to fill a temp folder beside it and renames that into place, so an interrupted run
# never leaves a half folder; the stamp is written last. One run at a time per NAME: parallel
# test processes may all ask for the model at once.
cached_folder() {
    local name="$1" hash="$2" build="$3"
    local out="$CACHE/$name"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.fetch-$name.lock"
    flock 9
    if [[ "$(cat "$out/.complete" 2>/dev/null || true)" != "$hash" ]]; then
        # What a killed run left is a temp folder; holding the lock, we know it is dead.
        rm -rf "$CACHE/.$name".*
        CACHED_FOLDER_TMP="$(mktemp -d "$CACHE/.$name.XXXXXX")"
        trap 'rm -rf "$CACHED_FOLDER_TMP"' EXIT
        "$build" "$CACHED_FOLDER_TMP"
        chmod 755 "$CACHED_FOLDER_TMP" # mktemp makes it owner-only
        rm -rf "$out"
        mv "$CACHED_FOLDER_TMP" "$out"
        echo "$hash" >"$out/.complete"
    fi
    echo "$out" >&3
}

# The sha256 of the files' contents, in order.
content_hash() { cat "$@" | sha256sum | cut -d' ' -f1; }
