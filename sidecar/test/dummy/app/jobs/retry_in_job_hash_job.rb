# frozen_string_literal: true

# A three-argument sidekiq_retry_in block gets the job hash.
class RetryInJobHashJob
  include Sidekiq::Worker

  sidekiq_retry_in { |_count, _ex, job| job["args"].first }

  def perform(_seconds)
    raise "fail"
  end
end
