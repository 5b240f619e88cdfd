# frozen_string_literal: true

require_relative "../../lib/demo/recording_middleware"
require_relative "../../lib/demo/handlers"
require_relative "../../lib/demo/trace_middleware"

redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0")}

Sidekiq.configure_client do |config|
  config.redis = redis
  config.client_middleware { |chain| chain.add Demo::TraceMiddleware } if ENV["DEMO_CLIENT_MIDDLEWARE"]
end

# Runs in the Sidekiq server, and in the fastworker sidecar (which boots as the server).
Sidekiq.configure_server do |config|
  config.redis = redis
  config.server_middleware do |chain|
    chain.add Demo::RecordingMiddleware
  end
  # as Sidekiq's docs say: client middleware in the server too (the poller and jobs enqueue there)
  config.client_middleware { |chain| chain.add Demo::TraceMiddleware } if ENV["DEMO_CLIENT_MIDDLEWARE"]
  config.error_handlers << Demo::Handlers.method(:on_error)
  config.death_handlers << Demo::Handlers.method(:on_death)
end
