# frozen_string_literal: true

# Returns at once, so the worker batches it, unless told to hang for `seconds` (a fast job that
# sometimes stalls: --job-timeout tests).
class HangWorker
  include Sidekiq::Worker

  def perform(seconds = 0)
    sleep(seconds.to_f) if seconds.to_f.positive?
  end
end
