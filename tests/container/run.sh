#!/usr/bin/env bash
# The container stage (`make test-container`; CI runs it after `make test`): find a Docker
# engine, then run tests/container/stage.py (build both images, run the API image, compose end
# to end). Stops what it started, whatever happens.
#
# Engine, in this order:
#   1. one that already answers `docker info` (DOCKER_HOST or the default socket): used, left running;
#   2. ../shared/tools/container-env (the build machines' engine; needs root): started with `up`
#      if it was not running, and stopped with `down` on exit;
#   3. none: the stage is skipped with the reason, except under CI=true, where that fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
CONTAINER_ENV=${CONTAINER_ENV:-../shared/tools/container-env}

skip_or_fail() {
  if [ "${CI:-}" = "true" ]; then echo "container: FAIL: $1 (CI=true needs the container stage)" >&2; exit 1; fi
  echo "container: SKIP: $1"
  exit 0
}

started_env=no
cleanup() {
  if [ "$started_env" = yes ]; then "$CONTAINER_ENV" down >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "container: using the running Docker engine"
elif [ -x "$CONTAINER_ENV" ]; then
  [ "$(id -u)" = 0 ] || skip_or_fail "$CONTAINER_ENV needs root"
  env_status=$("$CONTAINER_ENV" status 2>&1 || true)
  case "$env_status" in *"dockerd running"*) ;; *) started_env=yes ;; esac
  echo "container: starting the engine with $CONTAINER_ENV up"
  env_out=$("$CONTAINER_ENV" up) || { echo "container: FAIL: $CONTAINER_ENV up failed" >&2; exit 1; }
  eval "$env_out"
else
  skip_or_fail "no Docker engine (docker info fails) and no $CONTAINER_ENV"
fi

export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
"$PYTHON" -m tests.container.stage
