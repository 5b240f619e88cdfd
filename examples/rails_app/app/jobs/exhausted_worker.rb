# frozen_string_literal: true

# Dead on its first failure (retry: 0); sidekiq_retries_exhausted records a JobEvent.
class ExhaustedWorker
  include Sidekiq::Worker
  sidekiq_options retry: 0

  sidekiq_retries_exhausted do |job, exception|
    JobEvent.record!("exhausted", job, exception)
  end

  def perform
    JobRun.record!(self, kind: "exhausted", args: [], status: "failed")
    raise "exhausted worker gives up"
  end
end
