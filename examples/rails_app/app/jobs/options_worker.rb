# frozen_string_literal: true

# Always fails; its options shape the retry entries: at most 2 retries, retried on the
# "low" queue, the first 5 backtrace lines stored.
class OptionsWorker
  include Sidekiq::Worker
  sidekiq_options retry: 2, retry_queue: "low", backtrace: 5

  class Failure < StandardError; end

  def perform
    JobRun.record!(self, kind: "options", args: [], status: "failed")
    raise Failure, "options worker always fails"
  end
end
