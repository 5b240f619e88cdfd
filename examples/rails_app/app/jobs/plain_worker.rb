# frozen_string_literal: true

# A plain Sidekiq::Worker.
class PlainWorker
  include Sidekiq::Worker

  def perform(label, number)
    logger.info("PlainWorker #{label} #{number}")
    JobRun.record!(self, kind: "plain", args: [label, number])
  end
end
