# frozen_string_literal: true

require_relative "../../lib/demo/recording_middleware"
require_relative "../../lib/demo/handlers"

redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0")}

Sidekiq.configure_client do |config|
  config.redis = redis
end

# Runs in the Sidekiq server, and in the fastworker sidecar (which boots as the server).
Sidekiq.configure_server do |config|
  config.redis = redis
  config.server_middleware do |chain|
    chain.add Demo::RecordingMiddleware
  end
  config.error_handlers << Demo::Handlers.method(:on_error)
  config.death_handlers << Demo::Handlers.method(:on_death)
end
