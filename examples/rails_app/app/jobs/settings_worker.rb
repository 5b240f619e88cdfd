# frozen_string_literal: true

# Reports the Sidekiq options the app's Ruby code sees while it runs (the server's settings):
# SET <key> to {"concurrency", "max_retries", "timeout", "redis_pool_size", "pid"} as JSON (pid: the
# process that ran it).
class SettingsWorker
  include Sidekiq::Worker

  def perform(key)
    opts = Sidekiq.respond_to?(:default_configuration) ? Sidekiq.default_configuration : Sidekiq.options
    seen = {"concurrency" => opts[:concurrency], "max_retries" => opts[:max_retries], "timeout" => opts[:timeout],
            "redis_pool_size" => Sidekiq.redis_pool.size, "pid" => Process.pid}
    Sidekiq.redis { |c| c.set(key, JSON.generate(seen)) }
  end
end
