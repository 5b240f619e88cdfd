# frozen_string_literal: true

# Waits (a sleep leaves the GVL free, as a database round trip does), then records its jid,
# the thread it ran on and when it ran.
class WaitJob
  include Sidekiq::Worker

  def perform(seconds)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    sleep seconds.to_f
    Recorder.add(:wait, {"jid" => jid, "thread" => Thread.current.object_id,
                         "started" => started, "ended" => Process.clock_gettime(Process::CLOCK_MONOTONIC)})
  end
end
