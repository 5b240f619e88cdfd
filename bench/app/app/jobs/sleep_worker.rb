# frozen_string_literal: true

# Sleeps, then records when it ran ("start end", CLOCK_REALTIME seconds), so the benchmark can
# count how many ran at once across processes from the intervals alone.
class SleepWorker
  include Sidekiq::Worker

  def perform(ms)
    started = Process.clock_gettime(Process::CLOCK_REALTIME)
    sleep(ms / 1000.0)
    ended = Process.clock_gettime(Process::CLOCK_REALTIME)
    Sidekiq.redis { |c| c.rpush("bench:slow", "#{started} #{ended}") }
  end
end
