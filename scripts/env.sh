# Shared settings for the scripts: one cargo target dir and one Python venv outside the clone, so
# repeated runs (and CI runs of later clones) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flightlm-target}"
# Incremental artifacts of the large workspace crates have failed to link after edits ("undefined
# hidden symbol"); whole-crate rebuilds cost little more here and always link.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
FLIGHTLM_VENV="${FLIGHTLM_VENV:-$HOME/.cache/flightlm-venv}"
FLIGHTLM_BIN="${FLIGHTLM_BIN:-$CARGO_TARGET_DIR/debug}"

# Creates the venv with scripts/requirements.txt unless it already satisfies it.
ensure_python() {
    local stamp="$FLIGHTLM_VENV/.requirements"
    if ! cmp -s "$FLIGHTLM_REPO/scripts/requirements.txt" "$stamp" 2>/dev/null; then
        python3 -m venv "$FLIGHTLM_VENV"
        "$FLIGHTLM_VENV/bin/pip" install --quiet --disable-pip-version-check \
            -r "$FLIGHTLM_REPO/scripts/requirements.txt"
        cp "$FLIGHTLM_REPO/scripts/requirements.txt" "$stamp"
    fi
    export FLIGHTLM_PYTHON="$FLIGHTLM_VENV/bin/python"
}

# Installs Azurite (Azure Blob Storage's emulator, from npm, the version in
# scripts/azurite-version) beside the venv unless it is there, and sets FLIGHTLM_AZURITE to its
# azurite-blob script for the remote-corpus tests.
ensure_azurite() {
    local prefix="$FLIGHTLM_VENV/azurite" version
    version=$(cat "$FLIGHTLM_REPO/scripts/azurite-version")
    if ! cmp -s "$FLIGHTLM_REPO/scripts/azurite-version" "$prefix/.version" 2>/dev/null; then
        mkdir -p "$prefix"
        npm install --prefix "$prefix" --no-audit --no-fund --silent "azurite@$version"
        cp "$FLIGHTLM_REPO/scripts/azurite-version" "$prefix/.version"
    fi
    export FLIGHTLM_AZURITE="$prefix/node_modules/.bin/azurite-blob"
}

# Completes the PyTorch venv ($FLIGHTLM_TORCH_VENV, default ~/.cache/flightlm-torch-venv) from
# scripts/requirements-torch.txt unless it already has it, and sets TORCH_PYTHON.
ensure_torch_python() {
    local venv="${FLIGHTLM_TORCH_VENV:-$HOME/.cache/flightlm-torch-venv}"
    local stamp="$venv/.requirements"
    if ! cmp -s "$FLIGHTLM_REPO/scripts/requirements-torch.txt" "$stamp" 2>/dev/null; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            -r "$FLIGHTLM_REPO/scripts/requirements-torch.txt"
        cp "$FLIGHTLM_REPO/scripts/requirements-torch.txt" "$stamp"
    fi
    TORCH_PYTHON="$venv/bin/python"
}

# Waits (up to 60 s) until a process started with its stdout in FILE announces its address, and
# prints the "url" (or, for flightlm-fault-proxy, "listening") field. Usage: wait_for_url FILE PID
wait_for_url() {
    local file=$1 pid=$2 url=""
    for _ in $(seq 1 600); do
        url=$(sed -n 's/.*"\(url\|listening\)":"\([^"]*\)".*/\2/p' "$file" 2>/dev/null | head -1)
        [ -n "$url" ] && { echo "$url"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "no address announced in $file" >&2
    return 1
}
