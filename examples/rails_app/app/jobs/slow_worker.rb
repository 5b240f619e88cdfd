# frozen_string_literal: true

# Sleeps for `seconds` (busy-jobs display, shutdown and capacity tests).
class SlowWorker
  include Sidekiq::Worker

  def perform(seconds)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sleep(seconds.to_f)
    JobRun.record!(self, kind: "slow", args: [seconds],
                         details: {"slept" => (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(3)})
  end
end
