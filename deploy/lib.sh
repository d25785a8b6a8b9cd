# shellcheck shell=bash
# Shared helpers for the deploy/* scripts (sourced, never executed).
#
# Conventions:
#   * Configuration comes from the env file: $ENV_FILE, default <repo>/.env (copy .env.example).
#     The file is sourced by bash, so values with spaces need quotes.
#   * DRY_RUN=1 prints every command a script would run instead of running it, one per line on
#     stdout, as "+ " followed by the command, each word shell-quoted so that the line (without
#     the "+ ") can be pasted into a shell. Notes go to stderr, prefixed with "# ".
#     Read-only probes of the local gcloud (`--help` output) still run.
#   * Without DRY_RUN every command is echoed to stderr the same way before it runs.
#   * GCLOUD overrides the gcloud binary that is run (printed commands always say "gcloud").

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The dry-run output, so that commands run inside $(...) print there too.
exec 3>&1
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"

# The worker's variables passed to the worker pool: all that the worker reads (VARIABLES in
# src/config.rs) but the emulator ones; tests/deploy/worker_pool.rs checks it.
WORKER_VARS=(
  PROJECT_ID SUBSCRIPTION_ID BUCKET_NAME OBJECT_PREFIX OBJECT_NAME
  OBJECT_CONTENT_TYPE OBJECT_COMPRESSION OBJECT_STORAGE_CLASS OBJECT_CACHE_CONTROL
  OBJECT_CUSTOM_TIME KMS_KEY_NAME
  MAX_OUTSTANDING_MESSAGES MAX_OUTSTANDING_BYTES MAX_CONCURRENT_WRITES PULL_STREAMS STREAM_IDLE_SECS
  MAX_LEASE_EXTENSION_SECS SHUTDOWN_TIMEOUT_SECS PROGRESS_INTERVAL_SECS
  LOG_FORMAT RUST_LOG WRITE_TIMEOUT_SECS HEALTH_PORT HEALTH_HOST LIVENESS_STALL_SECS STARTUP_CHECK
  PUBSUB_ENDPOINT
)
# Read by the worker for local runs only; never passed to the worker pool.
LOCAL_ONLY_VARS=(PUBSUB_EMULATOR_HOST STORAGE_EMULATOR_HOST)

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

note() {
  printf '# %s\n' "$*" >&2
}

is_dry_run() {
  case "${DRY_RUN:-}" in
    "" | 0 | false | no) return 1 ;;
    *) return 0 ;;
  esac
}

# Prints one word so that a POSIX shell reads it back unchanged.
quote_word() {
  local word=$1
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
    printf '%s' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Prints a command line: "+ " and the quoted words.
print_cmd() {
  local line="+" word
  for word in "$@"; do
    line+=" $(quote_word "$word")"
  done
  printf '%s\n' "$line"
}

# Runs the command, or prints it when DRY_RUN is set. A leading "gcloud" runs $GCLOUD.
run() {
  if is_dry_run; then
    print_cmd "$@"
    return 0
  fi
  print_cmd "$@" >&2
  if [[ $1 == gcloud ]]; then
    "${GCLOUD:-gcloud}" "${@:2}"
  else
    "$@"
  fi
}

# Like run, but a failure is reported and remembered (FAILURES) instead of stopping the script.
FAILURES=0
run_or_warn() {
  if ! run "$@"; then
    note "FAILED (continuing): $(print_cmd "$@")"
    FAILURES=$((FAILURES + 1))
  fi
}

# Like run, retried a few times: IAM bindings for a service account created seconds ago can fail
# until the account has propagated.
run_retry() {
  local attempt
  for attempt in 1 2 3 4 5; do
    if run "$@"; then
      return 0
    fi
    if [[ $attempt -lt 5 ]]; then
      note "retrying in $((attempt * 5)) s"
      sleep $((attempt * 5))
    fi
  done
  die "gave up after 5 attempts: $(print_cmd "$@")"
}

# exists CMD...: true when the describe command CMD succeeds (its output is discarded).
# In DRY_RUN, prints CMD and answers with DRY_RUN_EXISTS (default "no").
exists() {
  if is_dry_run; then
    print_cmd "$@"
    [[ ${DRY_RUN_EXISTS:-0} == 1 ]]
    return
  fi
  print_cmd "$@" >&2
  "${GCLOUD:-gcloud}" "${@:2}" >/dev/null 2>&1
}

# lookup PLACEHOLDER CMD...: prints what the read-only gcloud command CMD prints (nothing when it
# fails). In DRY_RUN, prints CMD instead and answers PLACEHOLDER when DRY_RUN_EXISTS=1, else
# nothing, as if what CMD looks for did not exist.
lookup() {
  local placeholder=$1
  shift
  if is_dry_run; then
    print_cmd "$@" >&3
    if [[ ${DRY_RUN_EXISTS:-0} == 1 ]]; then
      printf '%s\n' "$placeholder"
    fi
    return 0
  fi
  print_cmd "$@" >&2
  "${GCLOUD:-gcloud}" "${@:2}" 2>/dev/null || true
}

# ensure WHAT DESCRIBE... -- CREATE...: runs CREATE unless DESCRIBE says WHAT exists.
# In DRY_RUN both are printed.
ensure() {
  local what=$1
  shift
  local describe=() create=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    describe+=("$1")
    shift
  done
  [[ $# -gt 0 ]] || die "ensure: missing -- between the describe and create commands"
  shift
  create=("$@")
  if exists "${describe[@]}"; then
    note "$what exists, not created"
  else
    run "${create[@]}"
  fi
}

# delete_if_exists WHAT DESCRIBE... -- DELETE...: runs DELETE when DESCRIBE says WHAT exists
# (in DRY_RUN both are printed); a failed delete is reported and counted (FAILURES) so that teardown goes on.
delete_if_exists() {
  local what=$1
  shift
  local describe=() delete=()
  while [[ $# -gt 0 && $1 != -- ]]; do
    describe+=("$1")
    shift
  done
  [[ $# -gt 0 ]] || die "delete_if_exists: missing -- between the describe and delete commands"
  shift
  delete=("$@")
  # In DRY_RUN, assume it exists so that the delete is printed too.
  if DRY_RUN_EXISTS=1 exists "${describe[@]}"; then
    run_or_warn "${delete[@]}"
  else
    is_dry_run || note "$what not found, nothing to delete"
  fi
}

# Loads the env file. The worker's own variables are taken from the file only (never inherited
# from the calling shell), so what is deployed is exactly what the file says.
load_env() {
  local file="${ENV_FILE:-$REPO_ROOT/.env}"
  [[ -f $file ]] || die "no env file at $file: run 'cp .env.example .env' and edit it (or set ENV_FILE)"
  local name
  for name in "${WORKER_VARS[@]}" "${LOCAL_ONLY_VARS[@]}"; do
    unset "$name"
  done
  set -a
  # shellcheck source=/dev/null
  source "$file"
  set +a

  # Defaults of the deploy variables: the same values as .env.example.
  : "${REGION:=us-central1}"
  : "${WORKER_POOL:=pubsub-gcs-worker}"
  : "${INSTANCES:=1}"
  : "${CPU:=1}"
  : "${MEMORY:=512Mi}"
  : "${SERVICE_ACCOUNT:=pubsub-gcs-worker}"
  : "${TOPIC_ID:=pubsub-gcs-worker}"
  : "${ACK_DEADLINE:=60}"
  : "${MIN_RETRY_DELAY:=10s}"
  : "${MAX_RETRY_DELAY:=600s}"
  : "${DEAD_LETTER_TOPIC_ID:=pubsub-gcs-worker-dead-letter}"
  : "${DEAD_LETTER_SUBSCRIPTION_ID:=pubsub-gcs-worker-dead-letter}"
  : "${MAX_DELIVERY_ATTEMPTS:=5}"
  # Set but empty means "keep no acked messages", so only an unset one takes the default.
  : "${RETAIN_ACKED_FOR=7d}"
  : "${EXACTLY_ONCE_DELIVERY:=}"
  : "${BUCKET_LOCATION:=$REGION}"
  : "${ARTIFACT_REPO:=pubsub-gcs-worker}"
  : "${IMAGE_NAME:=pubsub-gcs-worker}"
  : "${IMAGE_TAG:=}"
  : "${BUILD_MACHINE_TYPE:=e2-highcpu-8}"
  : "${BUILD_TIMEOUT:=3600s}"
  : "${SCALING_FLAG:=}"
  : "${PROJECT_NUMBER:=}"
  : "${METRICS_EXPORT:=}"
  : "${METRICS_SIDECAR_IMAGE:=us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0}"
  : "${METRICS_SIDECAR_CPU:=1}"
  : "${METRICS_SIDECAR_MEMORY:=512Mi}"
  : "${ALERT_NOTIFICATION_CHANNELS:=}"
  : "${ALERT_OLDEST_UNACKED_SECS:=600}"
  : "${ALERT_NACK_MINUTES:=10}"
  : "${AUTOSCALE_MIN_INSTANCES:=0}"
  : "${AUTOSCALE_MAX_INSTANCES:=10}"
  : "${AUTOSCALE_TARGET_BACKLOG:=5000}"
  : "${AUTOSCALER_SERVICE:=pubsub-gcs-worker-autoscaler}"
  : "${AUTOSCALER_SERVICE_ACCOUNT:=pubsub-gcs-worker-autoscaler}"
  : "${AUTOSCALER_IMAGE:=us-central1-docker.pkg.dev/cloud-run-oss-images/crema-v1/autoscaler:1.2}"
  : "${AUTOSCALER_BASE_IMAGE:=us-central1-docker.pkg.dev/serverless-runtimes/google-24/runtimes/java25}"

  require PROJECT_ID SUBSCRIPTION_ID BUCKET_NAME REGION WORKER_POOL SERVICE_ACCOUNT
  is_count "$INSTANCES" || die "INSTANCES must be a whole number, got '$INSTANCES'"
  case "$METRICS_EXPORT" in
    "") ;;
    managed-prometheus)
      # The sidecar scrapes port 8080 unless given a configuration of its own (from Secret
      # Manager), which these scripts do not set up.
      [[ ${HEALTH_PORT:-} == 8080 ]] ||
        die "METRICS_EXPORT=managed-prometheus needs HEALTH_PORT=8080 (the worker serves /metrics there and the sidecar scrapes port 8080), got HEALTH_PORT='${HEALTH_PORT:-}'"
      ;;
    *) die "METRICS_EXPORT must be managed-prometheus or empty, got '$METRICS_EXPORT'" ;;
  esac
  # How long the subscriptions keep messages, acked ones included: the window deploy/replay
  # can seek back in. Pub/Sub takes 10 minutes to 31 days.
  RETAIN_SECS=0
  if [[ -n $RETAIN_ACKED_FOR ]]; then
    if ! RETAIN_SECS="$(duration_seconds "$RETAIN_ACKED_FOR")" || ((RETAIN_SECS < 600 || RETAIN_SECS > 31 * 86400)); then
      die "RETAIN_ACKED_FOR must be a duration from 10m to 31d such as 7d, 36h or 90m (or empty: keep no acked messages), got '$RETAIN_ACKED_FOR'"
    fi
  fi

  # Derived names, used by the scripts that source this file.
  # shellcheck disable=SC2034
  if [[ $SERVICE_ACCOUNT == *@* ]]; then
    SA_EMAIL=$SERVICE_ACCOUNT
  else
    SA_EMAIL="$SERVICE_ACCOUNT@$PROJECT_ID.iam.gserviceaccount.com"
  fi
  # shellcheck disable=SC2034
  IMAGE_URL="$REGION-docker.pkg.dev/$PROJECT_ID/$ARTIFACT_REPO/$IMAGE_NAME"
  # shellcheck disable=SC2034
  BUCKET_URL="gs://$BUCKET_NAME"
  # The worker's custom role on the bucket (deploy/setup); one per worker pool, as teardown
  # deletes it. Role ids take letters, digits, _ and . only.
  # shellcheck disable=SC2034
  WORKER_ROLE="${WORKER_POOL//-/_}_object_writer"
  # The subscription's id, and its full name.
  # shellcheck disable=SC2034
  SUBSCRIPTION_NAME=${SUBSCRIPTION_ID##*/}
  # shellcheck disable=SC2034
  if [[ $SUBSCRIPTION_ID == projects/* ]]; then
    SUBSCRIPTION_PATH=$SUBSCRIPTION_ID
  else
    SUBSCRIPTION_PATH="projects/$PROJECT_ID/subscriptions/$SUBSCRIPTION_ID"
  fi

  # Generated configuration files go here: removed at exit, kept under DRY_RUN for inspection
  # (and for gcloud to read when a printed command is run).
  GENERATED="$(mktemp -d "${TMPDIR:-/tmp}/pubsub-gcs-worker.XXXXXX")"
  is_dry_run || trap 'rm -rf "$GENERATED"' EXIT
}

# Whether the worker pool runs the Managed Service for Prometheus sidecar (METRICS_EXPORT).
metrics_export() {
  [[ $METRICS_EXPORT == managed-prometheus ]]
}

# grant_on_project MEMBER ROLE: a project-level binding, for the roles that bind nowhere else.
# --condition=None keeps gcloud from asking when the project's policy has conditional bindings.
grant_on_project() {
  run_retry gcloud projects add-iam-policy-binding "$PROJECT_ID" \
    --member="$1" --role="$2" --condition=None
}

# revoke_on_project MEMBER ROLE: removes the binding if the project's policy has it (in DRY_RUN,
# prints the removal too).
revoke_on_project() {
  local found
  found="$(DRY_RUN_EXISTS=1 lookup "$2" gcloud projects get-iam-policy "$PROJECT_ID" \
    --flatten=bindings[].members --format='value(bindings.role)' \
    --filter="bindings.role=\"$2\" AND bindings.members=\"$1\"")"
  if [[ -n $found ]]; then
    run_or_warn gcloud projects remove-iam-policy-binding "$PROJECT_ID" \
      --member="$1" --role="$2" --condition=None
  fi
}

# render TEMPLATE OUT NAME...: writes TEMPLATE to OUT with each @NAME@ replaced by the value of
# that shell variable. A placeholder left over is an error.
render() {
  local template=$1 out=$2 text name
  shift 2
  text="$(<"$template")"
  for name in "$@"; do
    text=${text//"@$name@"/"${!name}"}
  done
  if [[ $text =~ @[A-Z][A-Z0-9_]*@ ]]; then
    die "$template: no value for ${BASH_REMATCH[0]}"
  fi
  printf '%s\n' "$text" >"$out"
  ! is_dry_run || note "$out written"
}

# require NAME...: each variable must be set and non-empty.
require() {
  local name missing=()
  for name in "$@"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    die "not set in the env file: ${missing[*]}"
  fi
}

is_count() {
  [[ $1 =~ ^[0-9]+$ ]]
}

# duration_seconds DURATION: a duration as gcloud writes them (90s, 30m, 36h, 7d) in seconds;
# fails on anything else.
duration_seconds() {
  [[ $1 =~ ^([0-9]{1,7})([smhd])$ ]] || return 1
  local n=$((10#${BASH_REMATCH[1]}))
  case ${BASH_REMATCH[2]} in
    s) printf '%s\n' "$n" ;;
    m) printf '%s\n' $((n * 60)) ;;
    h) printf '%s\n' $((n * 3600)) ;;
    d) printf '%s\n' $((n * 86400)) ;;
  esac
}

# iso_time SECONDS: the time SECONDS after the epoch in RFC 3339, UTC (2026-12-01T09:30:00Z).
iso_time() {
  date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -r "$1" +%Y-%m-%dT%H:%M:%SZ
}

# epoch_of TIME: the RFC 3339 time TIME (2026-12-01T09:30:00Z, with a fraction of a second or an
# offset such as +01:00) in seconds since the epoch; fails on anything else. BSD date (macOS)
# reads only the UTC form.
epoch_of() {
  local rfc3339='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$'
  [[ $1 =~ $rfc3339 ]] || return 1
  if ! date -u -d "$1" +%s 2>/dev/null; then
    [[ $1 == *Z ]] && date -j -u -f %Y-%m-%dT%H:%M:%S "${1:0:19}" +%s 2>/dev/null
  fi
}

# confirm YES WHAT: before a step that deletes something or changes what the subscription
# delivers, prints WHAT and asks for the project id to be typed; stops the script otherwise.
# Asks nothing when YES is 1 (--yes) or under DRY_RUN, and refuses without a terminal.
confirm() {
  local answer
  if [[ $1 -eq 1 ]] || is_dry_run; then
    return 0
  fi
  [[ -t 0 ]] || die "refusing to go on without a terminal to confirm on; pass --yes"
  printf '%s\nType the project id to go on: ' "$2" >&2
  read -r answer
  [[ $answer == "$PROJECT_ID" ]] || die "not confirmed, nothing done"
}

# access_token: sets TOKEN to an access token of the gcloud account, for the APIs that gcloud
# has no command for (under DRY_RUN, prints the command and leaves TOKEN empty).
TOKEN=
access_token() {
  if is_dry_run; then
    print_cmd gcloud auth print-access-token >&3
    return 0
  fi
  print_cmd gcloud auth print-access-token >&2
  TOKEN="$("${GCLOUD:-gcloud}" auth print-access-token)" || die "gcloud auth print-access-token failed"
}

# latest_point METRIC SUBSCRIPTION: the newest point, in the last 15 minutes, of the metric
# pubsub.googleapis.com/subscription/METRIC of the subscription, as "VALUE SECONDS" (the point's
# time in seconds since the epoch), from the Monitoring API (gcloud has no command that reads
# time series); nothing when there is no point. A failed request is noted on stderr and fails.
# The token (TOKEN, from access_token) goes to curl on stdin, never on a command line. Under
# DRY_RUN, prints the request instead. Pub/Sub samples these metrics every 60 s and they arrive
# a few minutes late.
latest_point() {
  local metric=$1 sub=${2##*/} start end
  end=$(date -u +%s)
  start=$((end - 900))
  local curl_cmd=(curl -sS --fail-with-body -G -H @-
    "https://monitoring.googleapis.com/v3/projects/$PROJECT_ID/timeSeries"
    --data-urlencode "filter=metric.type=\"pubsub.googleapis.com/subscription/$metric\" AND resource.labels.subscription_id=\"$sub\""
    --data-urlencode "interval.startTime=$(iso_time "$start")"
    --data-urlencode "interval.endTime=$(iso_time "$end")")
  if is_dry_run; then
    print_cmd "${curl_cmd[@]}" >&3
    note "curl reads the header 'Authorization: Bearer <token from gcloud auth print-access-token>' on stdin"
    return 0
  fi
  print_cmd "${curl_cmd[@]}" >&2
  local response value at
  if ! response="$(printf 'Authorization: Bearer %s\n' "$TOKEN" | "${curl_cmd[@]}")"; then
    note "Monitoring API request failed: $response"
    return 1
  fi
  # Points come newest first, each with its interval; int64Value is a JSON string.
  value="$(sed -n 's/.*"int64Value": *"\([0-9]*\)".*/\1/p' <<<"$response" | sed -n 1p)"
  at="$(sed -n 's/.*"endTime": *"\([^"]*\)".*/\1/p' <<<"$response" | sed -n 1p)"
  if [[ -n $value ]] && at="$(epoch_of "$at")"; then
    printf '%s %s\n' "$value" "$at"
  fi
}

# Writes the worker's variables as a YAML map for --env-vars-file (all values quoted strings).
# Variables left unset in the env file are not written, so the worker uses its defaults.
write_worker_env_file() {
  local file=$1 name value
  : >"$file"
  for name in "${WORKER_VARS[@]}"; do
    [[ -n ${!name+set} ]] || continue
    value=${!name}
    [[ $value != *$'\n'* ]] || die "$name contains a newline"
    printf "%s: '%s'\n" "$name" "${value//\'/\'\'}" >>"$file"
  done
  for name in "${LOCAL_ONLY_VARS[@]}"; do
    if [[ -n ${!name:-} ]]; then
      note "$name is set in the env file; it is for local runs and is not passed to the worker pool"
    fi
  done
}

# Whether `gcloud beta run worker-pools $1 --help` lists the flag $2 (releases differ).
gcloud_has_flag() {
  local help
  help="$("${GCLOUD:-gcloud}" beta run worker-pools "$1" --help 2>/dev/null)" || return 1
  # The help text may carry terminal bold codes right after the flag name, hence [^a-z-].
  grep -Eq -- "$2([^a-z-]|\$)" <<<"$help"
}

# The flag that sets a worker pool's instance count: older gcloud releases have --scaling=N,
# newer ones --instances=N. SCALING_FLAG in the env file overrides the probe.
# $1: the worker-pools command whose --help is read (deploy or update).
scaling_flag() {
  local command=$1 help
  case "$SCALING_FLAG" in
    --instances | --scaling)
      printf '%s\n' "$SCALING_FLAG"
      return 0
      ;;
    "") ;;
    *) die "SCALING_FLAG must be --instances or --scaling (or empty to ask gcloud), got '$SCALING_FLAG'" ;;
  esac
  help="$("${GCLOUD:-gcloud}" beta run worker-pools "$command" --help 2>/dev/null)" ||
    die "'gcloud beta run worker-pools $command --help' failed: is gcloud (with the beta component) installed?"
  # The help text may carry terminal bold codes right after the flag name, hence [^a-z-].
  if grep -Eq -- '--instances([^a-z-]|$)' <<<"$help"; then
    printf '%s\n' --instances
  elif grep -Eq -- '--scaling([^a-z-]|$)' <<<"$help"; then
    printf '%s\n' --scaling
  else
    die "'gcloud beta run worker-pools $command --help' lists neither --instances nor --scaling"
  fi
}

# pool_grant add|remove MEMBER ROLE: adds MEMBER to ROLE (or removes it) in the worker pool's own
# IAM policy. This gcloud release has no `worker-pools add-iam-policy-binding`, so the policy goes
# through the Cloud Run Admin API: read with curl (with a gcloud access token on stdin), edited by
# the Python that runs gcloud, and written back with its etag, so that a concurrent change makes
# the write fail instead of being lost.
pool_grant() {
  local url="https://run.googleapis.com/v2/projects/$PROJECT_ID/locations/$REGION/workerPools/$WORKER_POOL"
  local body="$GENERATED/pool-iam-policy.json" token policy python
  local get=(curl -sS --fail-with-body -H @- "$url:getIamPolicy?options.requestedPolicyVersion=3")
  local set=(curl -sS --fail-with-body -H @- -H 'Content-Type: application/json'
    --data-binary "@$body" "$url:setIamPolicy")
  if is_dry_run; then
    print_cmd gcloud auth print-access-token
    print_cmd "${get[@]}"
    note "curl reads the header 'Authorization: Bearer <token>' on stdin; $body: the policy read, edited ($1 $2 in $3)"
    print_cmd "${set[@]}"
    return 0
  fi
  print_cmd gcloud auth print-access-token >&2
  token="$("${GCLOUD:-gcloud}" auth print-access-token)" || die "gcloud auth print-access-token failed"
  print_cmd "${get[@]}" >&2
  policy="$(printf 'Authorization: Bearer %s\n' "$token" | "${get[@]}")" ||
    die "could not read the IAM policy of worker pool $WORKER_POOL: $policy"
  python="$("${GCLOUD:-gcloud}" info --format='value(basic.python_location)')"
  "$python" -c "$EDIT_POLICY" "$1" "$2" "$3" <<<"$policy" >"$body" ||
    die "could not edit the IAM policy of worker pool $WORKER_POOL"
  print_cmd "${set[@]}" >&2
  printf 'Authorization: Bearer %s\n' "$token" | "${set[@]}" >/dev/null ||
    die "could not write the IAM policy of worker pool $WORKER_POOL"
}

# set_probes STARTUP LIVENESS: sets the worker container's probes, given as the deploy flags take
# them (httpGet.path=P,httpGet.port=N,periodSeconds=N,...), when this gcloud's deploy cannot:
# the pool is read (describe, as JSON, so that the Python that runs gcloud edits it without a
# YAML library), stripped of what describe --format=export leaves out, given the probes, and
# applied with replace. In DRY_RUN the pool read is a skeleton of the one deploy just wrote.
set_probes() {
  local file="$GENERATED/worker-pool-probes.yaml" python pool
  local describe=(gcloud beta run worker-pools describe "$WORKER_POOL" "${P[@]}" --region="$REGION"
    --format=json)
  python="$("${GCLOUD:-gcloud}" info --format='value(basic.python_location)')"
  if is_dry_run; then
    print_cmd "${describe[@]}"
    note "$file: a skeleton of the pool standing in for what describe reads, probes added"
    pool="$(printf '{"apiVersion": "run.googleapis.com/v1", "kind": "WorkerPool", "metadata":
      {"name": "%s", "namespace": "%s", "labels": {"cloud.googleapis.com/location": "%s"}},
      "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "%s"}]}}}}' \
      "$WORKER_POOL" "$PROJECT_ID" "$REGION" "$IMAGE")"
  else
    print_cmd "${describe[@]}" >&2
    pool="$("${GCLOUD:-gcloud}" "${describe[@]:1}")" ||
      die "could not read worker pool $WORKER_POOL to add its probes"
  fi
  "$python" -c "$ADD_PROBES" "$1" "$2" <<<"$pool" >"$file" ||
    die "could not add the probes to worker pool $WORKER_POOL"
  run gcloud beta run worker-pools replace "$file" "${P[@]}"
}

# Reads a worker pool (Cloud Run Admin API v1, JSON) on stdin and prints it as describe
# --format=export would, with the startup (argv[1]) and liveness (argv[2]) probes, written as the
# deploy flags take them, on the worker's container: the first that is not the "collector" sidecar.
ADD_PROBES='
import json, sys
pool = json.load(sys.stdin)
pool.pop("status", None)
meta = pool.setdefault("metadata", {})
for key in ("creationTimestamp", "generation", "resourceVersion", "selfLink", "uid"):
    meta.pop(key, None)
for key in ("serving.knative.dev/creator", "serving.knative.dev/lastModifier",
            "run.googleapis.com/client-name", "run.googleapis.com/client-version",
            "run.googleapis.com/creatorEmail", "run.googleapis.com/lastModifierEmail",
            "run.googleapis.com/operation-id"):
    meta.get("annotations", {}).pop(key, None)
template = pool["spec"]["template"]
# A revision name would clash with the revision that has it: the new one gets its own.
template.get("metadata", {}).pop("name", None)
def probe(flag):
    fields = {}
    for pair in flag.split(","):
        path, value = pair.split("=", 1)
        *parents, last = path.split(".")
        node = fields
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = int(value) if value.isdigit() else value
    return fields
worker = next(c for c in template["spec"]["containers"] if c.get("name") != "collector")
worker["startupProbe"] = probe(sys.argv[1])
worker["livenessProbe"] = probe(sys.argv[2])
json.dump(pool, sys.stdout, indent=2)
'

# Adds (add) or removes (remove) argv[2] in the unconditional binding of role argv[3] of the IAM
# policy read on stdin, and prints the body of a setIamPolicy request for the result.
EDIT_POLICY='
import json, sys
action, member, role = sys.argv[1:4]
policy = json.load(sys.stdin)
bindings = policy.setdefault("bindings", [])
same = [b for b in bindings if b["role"] == role and "condition" not in b]
if action == "add" and not same:
    same = [{"role": role, "members": []}]
    bindings.append(same[0])
for binding in same:
    if action == "add" and member not in binding["members"]:
        binding["members"].append(member)
    if action == "remove" and member in binding["members"]:
        binding["members"].remove(member)
policy["bindings"] = [b for b in bindings if b["members"]]
json.dump({"policy": policy}, sys.stdout)
'
