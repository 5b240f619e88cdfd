# frozen_string_literal: true

# Counts which process ran it (cluster-spread tests): HINCRBY <key> <pid> 1, and how many ran at once.
class PidWorker
  include Sidekiq::Worker

  def perform(key, seconds = 0)
    Sidekiq.redis do |c|
      c.hincrby(key, Process.pid.to_s, 1)
      sleep(seconds.to_f) if seconds.to_f > 0
    end
  end
end
