# frozen_string_literal: true

class NoRetryJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  sidekiq_retries_exhausted { |_job, _ex| Recorder.add(:exhausted, "NoRetryJob") }

  def perform
    raise "no retries here"
  end
end
