# frozen_string_literal: true

class SlowJob
  include Sidekiq::Worker

  def perform(seconds)
    sleep seconds.to_f
    Recorder.add(:slow, jid)
  end
end
