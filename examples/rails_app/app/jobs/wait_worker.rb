# frozen_string_literal: true

# Waits as long as one quick database round trip (a sleep: the GVL is free meanwhile, as during
# I/O), then records when it ran: RPUSH <key> "start end" (CLOCK_MONOTONIC seconds, one host),
# so a test can count how many ran at once.
class WaitWorker
  include Sidekiq::Worker

  def perform(key, seconds)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sleep(seconds.to_f)
    ended = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    Sidekiq.redis { |c| c.rpush(key, "#{started} #{ended}") }
  end
end
