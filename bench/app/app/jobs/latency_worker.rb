# frozen_string_literal: true

# Records how long the job waited: start time minus the enqueue time it carries.
class LatencyWorker
  include Sidekiq::Worker

  def perform(enqueued_at)
    lag = Process.clock_gettime(Process::CLOCK_REALTIME) - enqueued_at
    Sidekiq.redis { |c| c.rpush("bench:latency", lag.to_s) }
  end
end
