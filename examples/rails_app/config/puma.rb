# frozen_string_literal: true

# For `bin/rails server` (the demo's web process: enqueue endpoint and health only).
threads_count = ENV.fetch("RAILS_MAX_THREADS", 5).to_i
threads threads_count, threads_count
port ENV.fetch("PORT", 3000)
bind "tcp://#{ENV.fetch("BIND", "127.0.0.1")}:#{ENV.fetch("PORT", 3000)}" if ENV["BIND"]
environment ENV.fetch("RAILS_ENV", "development")
