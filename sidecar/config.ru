# frozen_string_literal: true

# For teams that run their own Puma (or any Rack server):
#   RAILS_ROOT=/app puma -C my_puma.rb /path/to/sidecar/config.ru
# Set FASTWORKER_SIDECAR_THREADS to the number of Puma threads given to jobs (keep a couple of
# extra Puma threads for /health and 503s). The app boots before Puma serves, so /health
# answers 200 as soon as the port is open. On TERM the sidecar drains (503 to new /perform,
# running jobs finish, at most FASTWORKER_SIDECAR_DRAIN_TIMEOUT seconds) before Puma stops.
# Give Puma a long `persistent_timeout` (e.g. 3600) so idle worker connections stay open, and
# bind TCP with `?low_latency=true` (TCP_NODELAY; sidecar/README.md says why).
$LOAD_PATH.unshift(File.expand_path("lib", __dir__))

require "fastworker/sidecar"
require "fastworker/sidecar/boot"

rails_root = ENV.fetch("RAILS_ROOT") { Dir.pwd }
Fastworker::Sidecar::Wiring.configure!(rails_root, nil) # config/sidekiq.yml, as `sidekiq` finds it
threads = Integer(ENV.fetch("FASTWORKER_SIDECAR_THREADS", "10"), 10)
# /health reports the Puma worker count; outside Puma (or in single mode) that is 1.
workers = (defined?(::Puma) && ::Puma.respond_to?(:cli_config) && ::Puma.cli_config) ? ::Puma.cli_config.options[:workers].to_i : 1
drain, app = Fastworker::Sidecar::Wiring.build(threads: threads, workers: workers)
if defined?(::Puma::Server)
  # Puma 5's TERM handler re-raises SIGTERM after starting the stop, which would end the
  # process before the drain. Same as `raise_exception_on_sigterm false` in a Puma config.
  Puma.cli_config.options[:raise_exception_on_sigterm] = false if Puma.respond_to?(:cli_config) && Puma.cli_config
end

Fastworker::Sidecar::Wiring.boot!(drain, rails_root, nil)
run app
