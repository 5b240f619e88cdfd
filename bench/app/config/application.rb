# frozen_string_literal: true

# A minimal Rails 6.1 app for benchmarks: the same jobs run under the real Sidekiq and under
# fastworker + sidecar. No database: the jobs are no-ops, or write one Redis entry (latency).
# Production-like by default (classes cached, eager loaded), as the apps both servers replace run;
# BENCH_RELOAD=1 keeps class reloading on, whose per-job file check both servers then pay.
require "rails"
require "active_job/railtie"
require "sidekiq"

module BenchApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.cache_classes = ENV["BENCH_RELOAD"] != "1"
    config.eager_load = true
    config.active_job.queue_adapter = :sidekiq
    config.logger = ActiveSupport::Logger.new($stdout)
    config.log_level = ENV.fetch("BENCH_LOG_LEVEL", "info").to_sym
    config.secret_key_base = "bench"
  end
end
