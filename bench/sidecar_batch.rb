# frozen_string_literal: true

# bench/sidecar_batch.rb: the sidecar's per-job cost in Ruby, without HTTP.
#
# Duties:
# 1. Boot bench/app the way fastworker-sidecar boots it (Sidekiq server mode first,
#    RAILS_ENV=production: classes cached, unless BENCH_RELOAD=1), build the sidecar's App.
# 2. For NoopWorker and the ActiveJob wrapper around NoopJob, time in a loop: the Executor
#    alone, App#call with a /perform Rack env, App#call with a /perform_batch of 10 and 32.
# 3. Print CPU µs and allocated objects per job, one line per case (plus one JSON line with
#    --json): the best of 5 interleaved rounds, on this thread's CPU clock, so that other load
#    on a shared machine does not count.
#
# Usage: ruby bench/sidecar_batch.rb [--seconds 0.15] [--json]
#   --seconds: CPU time per case and round (8 cases x 5 rounds + warm-up: ~8 s by default).
# Set BENCH_LOG_LEVEL=info to keep Rails' per-job ActiveJob lines (default warn, as anchors.md).
require "json"
require "securerandom"
require "stringio"

ENV["RAILS_ENV"] = "production"
ENV["BENCH_LOG_LEVEL"] ||= "warn"
ENV["REDIS_URL"] ||= "redis://127.0.0.1:6379/0" # never touched by no-op jobs

ROOT = File.expand_path("..", __dir__)
$LOAD_PATH.unshift(File.join(ROOT, "sidecar", "lib"))
require "fastworker/sidecar"
require "fastworker/sidecar/boot"

seconds = 0.15
ROUNDS = 5
json = false
args = ARGV.dup
until args.empty?
  case (arg = args.shift)
  when "--seconds" then seconds = Float(args.shift)
  when "--json" then json = true
  else abort "usage: ruby bench/sidecar_batch.rb [--seconds S] [--json] (unknown #{arg})"
  end
end

APP_ROOT = File.join(ROOT, "bench", "app")
Dir.chdir(APP_ROOT) # as the Launcher: Rails finds its root from the working directory
Fastworker::Sidecar::Boot.sidekiq_server!
Fastworker::Sidecar::Boot.boot!(APP_ROOT, environment: "production")
Sidekiq.logger.level = Logger::WARN if ENV["BENCH_LOG_LEVEL"] == "warn"

drain = Fastworker::Sidecar::Drain.new(capacity: 10)
Fastworker::Sidecar.drain = drain
drain.ready!
# An open door: the requests here are built in-process and unsigned (a check costs about 4 µs
# per request, not per job); FASTWORKER_SIDECAR_SECRET from the environment must not refuse them.
app = Fastworker::Sidecar::App.new(drain: drain, door: Fastworker::Sidecar::Door.new)
executor = Fastworker::Sidecar::Executor.new(drain)

def payload(kind)
  now = Time.now.to_f
  jid = SecureRandom.hex(12)
  base = {"retry" => true, "queue" => "default", "jid" => jid, "created_at" => now, "enqueued_at" => now}
  case kind
  when "NoopWorker" then base.merge("class" => "NoopWorker", "args" => [1, "two"])
  when "NoopJob"
    base.merge("class" => "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped" => "NoopJob",
      "args" => [NoopJob.new(1, "two").serialize])
  end
end

def rack_env(path, body, keys_header, keys)
  {"REQUEST_METHOD" => "POST", "PATH_INFO" => path, "CONTENT_TYPE" => "application/json",
   "rack.input" => StringIO.new(body), keys_header => keys}
end

# Each case: [name, jobs per call, a lambda doing one call]. Payload bytes are built once:
# the worker sends the same kind of bytes every time, and parsing them is part of the cost.
cases = []
%w[NoopWorker NoopJob].each do |kind|
  raw = JSON.generate(payload(kind))
  job_jid = JSON.parse(raw)["jid"]
  cases << ["#{kind} executor", 1, -> { executor.call(Fastworker::Sidecar::Payload.parse_job(raw), raw, idempotency_key: job_jid) }]
  cases << ["#{kind} /perform", 1, lambda {
    status, = app.call(rack_env("/perform", raw, "HTTP_IDEMPOTENCY_KEY", job_jid))
    raise "perform answered #{status}" unless status == 200
  }]
  [10, 32].each do |n|
    raws = Array.new(n) { JSON.generate(payload(kind)) }
    body = raws.join("\n")
    keys = raws.map { |r| JSON.parse(r)["jid"] }.join(",")
    cases << ["#{kind} /perform_batch #{n}", n, lambda {
      status, _, out = app.call(rack_env("/perform_batch", body, "HTTP_IDEMPOTENCY_KEYS", keys))
      raise "perform_batch answered #{status}" unless status == 200
      raise "a job did not finish: #{out.join[0, 300]}" if out.join.include?('"failed"')
    }]
  end
end

CPU = Process::CLOCK_THREAD_CPUTIME_ID # this thread's CPU time: other load on the machine does not count

def warm_up(call, seconds)
  deadline = Process.clock_gettime(CPU) + seconds
  call.call while Process.clock_gettime(CPU) < deadline
end

# One round: calls for `seconds` of CPU time; µs of CPU and objects allocated per job.
def measure(call, per_call, seconds)
  GC.start
  calls = 0
  allocated = GC.stat(:total_allocated_objects)
  started = Process.clock_gettime(CPU)
  deadline = started + seconds
  while (now = Process.clock_gettime(CPU)) < deadline
    10.times { call.call }
    calls += 10
  end
  allocated = GC.stat(:total_allocated_objects) - allocated
  jobs = calls * per_call
  {us_per_job: (now - started) * 1e6 / jobs, allocs_per_job: allocated.to_f / jobs, jobs: jobs}
end

# Rounds interleave the cases, so a slow moment of the machine does not hit one case only;
# each case reports its best round (noise only ever adds time).
cases.each { |_, _, call| warm_up(call, seconds / 2) }
rounds = Array.new(ROUNDS) { cases.map { |_, per_call, call| measure(call, per_call, seconds) } }
results = {}
cases.each_with_index do |(name, _, _), i|
  best = rounds.map { |round| round[i] }.min_by { |r| r[:us_per_job] }
  r = results[name] = {us_per_job: best[:us_per_job].round(2), allocs_per_job: best[:allocs_per_job].round(1),
                       jobs: rounds.sum { |round| round[i][:jobs] }}
  puts format("%-30s %8.2f us/job %8.1f allocs/job  (%d jobs)", name, r[:us_per_job], r[:allocs_per_job], r[:jobs])
end
puts JSON.generate({"ruby" => RUBY_VERSION, "rails" => Rails.version, "sidekiq" => Sidekiq::VERSION,
                    "cache_classes" => Rails.application.config.cache_classes, "seconds" => seconds, "rounds" => ROUNDS,
                    "cases" => results}) if json
