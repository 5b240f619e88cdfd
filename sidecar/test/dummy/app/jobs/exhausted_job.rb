# frozen_string_literal: true

class ExhaustedJob
  include Sidekiq::Worker
  sidekiq_options retry: 0

  sidekiq_retries_exhausted do |job, ex|
    Recorder.add(:exhausted, {"job" => job, "error_class" => ex.class.name, "message" => ex.message})
    raise "exhausted block exploded" if job["args"].first == "raise"

    (job["args"].first == "discard") ? :discard : nil
  end

  def perform(_mode = nil)
    raise "always"
  end
end
