#!/usr/bin/env bash
# Run the whole test suite: install estargz with its test dependencies, build the Go interop
# checker from Debian packages (needs root for apt-get when they are missing), lint and type-check
# with ruff and mypy, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
if ! checker=$(bash tests/interop/build_checker.sh | tail -n 1); then
    if [ "${CI:-}" = "true" ]; then
        echo "tests/run.sh: the Go interop checker did not build" >&2
        exit 1
    fi
    echo "tests/run.sh: Go interop checker unavailable; interop tests will be skipped" >&2
else
    export ESTARGZ_CHECKER="$checker"
fi
python3 -m ruff check estargz
python3 -m mypy estargz
exec python3 -m pytest "$@"
