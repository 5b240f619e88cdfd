# frozen_string_literal: true

redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0")}
Sidekiq.configure_client { |c| c.redis = redis }
Sidekiq.configure_server do |c|
  c.redis = redis
  # BENCH_LOG_LEVEL=warn turns off the per-job start/done lines (anchors.md compares both ways)
  Sidekiq.logger.level = ENV.fetch("BENCH_LOG_LEVEL", "info") == "warn" ? Logger::WARN : Logger::INFO
end
