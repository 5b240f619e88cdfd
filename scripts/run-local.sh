#!/usr/bin/env bash
# The whole topology as local processes (what docker-compose.yml runs as containers):
# Redis (the local one), the demo Rails app, the sidecar (Puma + the app), and the worker.
# Enqueues one of every demo job kind with the real Sidekiq client, shows what ran, then keeps
# the worker and sidecar running (Ctrl-C stops both gracefully). DEMO_ONESHOT=1 exits after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
APP=$ROOT/examples/rails_app
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
SIDECAR_PORT=${SIDECAR_PORT:-3001}
# the worker signs every request with it and the sidecar refuses anything unsigned
export FASTWORKER_SIDECAR_SECRET=${FASTWORKER_SIDECAR_SECRET:-$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')}
HTTP_PORT=${HTTP_PORT:-9394}

redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 || {
  echo "run: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  sleep 0.5
}

echo "run: preparing the demo app's database"
(cd "$APP" && ruby bin/rails db:prepare)

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "run: starting the sidecar on 127.0.0.1:$SIDECAR_PORT"
ruby sidecar/bin/fastworker-sidecar --rails-root "$APP" --port "$SIDECAR_PORT" --threads 10 \
  > "$APP/log/sidecar.out" 2>&1 &
pids+=($!)
python3 - "$SIDECAR_PORT" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/health"
for _ in range(240):
    try:
        print(urllib.request.urlopen(url, timeout=1).read().decode())
        break
    except OSError:
        time.sleep(0.25)
else:
    sys.exit(f"run: the sidecar did not become healthy; see examples/rails_app/log/sidecar.out")
PY

echo "run: starting fastworker (queues critical,default,low; metrics on :$HTTP_PORT/metrics)"
python3 -m fastworker --queues critical,default,low -c 10 --sidecar-url "http://127.0.0.1:$SIDECAR_PORT" \
  --http-port "$HTTP_PORT" --log-format text --poll-interval 1 &
pids+=($!)

echo "run: enqueuing one job of each demo kind with the Sidekiq client (bin/rails runner)"
(cd "$APP" && ruby bin/rails runner '
  %w[plain noop model kwargs money flaky options retry_in exhausted retry_on aj_hooks].each do |kind|
    puts "#{kind}: #{DemoEnqueuer.enqueue(kind, 1).inspect}"
  end')

sleep 5
echo "run: what the jobs recorded (JobRun) and what Sidekiq's API says"
(cd "$APP" && ruby bin/rails runner '
  require "sidekiq/api"
  JobRun.order(:id).last(20).each { |r| puts format("%-10s %-28s jid=%s %s", r.kind, r.job_class, r.jid, r.status) }
  JobEvent.group(:event).count.each { |event, n| puts "event #{event}: #{n}" }
  s = Sidekiq::Stats.new
  puts "processed=#{s.processed} failed=#{s.failed} retries=#{s.retry_size} scheduled=#{s.scheduled_size} dead=#{s.dead_size} processes=#{s.processes_size}"')

if [ "${DEMO_ONESHOT:-}" = 1 ]; then exit 0; fi
echo "run: worker and sidecar keep running; enqueue more with: (cd $APP && bin/rake 'demo:enqueue[plain,100]'); Ctrl-C stops"
wait
