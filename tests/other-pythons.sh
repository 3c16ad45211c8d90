#!/usr/bin/env bash
# The core suites under other Pythons than the development one: by default all of them under the oldest
# one orch supports (pyproject.toml's requires-python: 3.10) and the quick ones under the newest (3.13),
# side by side (one per core), which keeps CI under its time limit. Each gets its own venv (.venv-X.Y)
# with orch and its dependencies only: no torch, MPI, Slurm or browser, so only suites that need none of
# them run. Each version's output is printed once it is done.
#   tests/other-pythons.sh [X.Y[:quick] ...]
# An interpreter is found as pythonX.Y on PATH or under pyenv; a missing one fails when
# ORCH_REQUIRE_PYTHONS=1 (CI), and is reported and passed over otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITES=(
    tests/test_keys.py tests/test_keys_e2e.py tests/test_key_trust.py tests/test_hashing.py tests/test_canonical.py
    tests/test_store.py tests/test_entry_index.py tests/test_task.py tests/test_plan_runner.py tests/test_runner.py
    tests/test_run_e2e.py tests/test_fastrun.py tests/test_launcher.py tests/test_errors_e2e.py
    tests/test_cachers_e2e.py tests/test_typeshim.py tests/test_compat_pickles.py tests/test_params.py
    tests/test_params_e2e.py tests/test_parsecache.py tests/test_reasons.py tests/test_bad_inputs.py
    tests/test_load_get.py tests/test_maintenance.py tests/test_security.py tests/test_damaged_cache.py
)
QUICK=(
    tests/test_keys.py tests/test_store.py tests/test_typeshim.py tests/test_run_e2e.py tests/test_fastrun.py
    tests/test_errors_e2e.py tests/test_key_trust.py
)
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    versions=(3.10 3.13:quick)
fi
run_one() {  # spec -> exit status; its output to .venv-X.Y.log
    local spec=$1 version=${1%%:*} python="" candidate venv
    local suites=("${SUITES[@]}")
    if [ "$spec" != "$version" ]; then
        suites=("${QUICK[@]}")
    fi
    for candidate in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python 2>/dev/null | sort -V -r) \
                     $(command -v "python$version" || true); do
        if "$candidate" -c pass 2>/dev/null; then  # (a pyenv shim of a version not selected fails)
            python=$candidate
            break
        fi
    done
    if [ -z "$python" ]; then
        if [ "${ORCH_REQUIRE_PYTHONS:-0}" = 1 ]; then
            echo "other-pythons: no Python $version here (ORCH_REQUIRE_PYTHONS=1)"
            return 1
        fi
        echo "other-pythons: no Python $version here: its suites are not run"
        return 0
    fi
    venv=".venv-$version"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet -e '.[test]' numpy 2>&1 | grep -v "^WARNING: Location" || true
    echo "== $("$venv/bin/python" --version)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${suites[@]}"
}

pids=()
for spec in "${versions[@]}"; do
    run_one "$spec" > ".venv-${spec%%:*}.log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
    cat ".venv-${versions[$i]%%:*}.log"
done
exit $status
