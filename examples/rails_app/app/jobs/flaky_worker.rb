# frozen_string_literal: true

# Fails `failures` times, then succeeds. Attempts are counted in the database (retries keep
# the jid). Retries after 1 s so end-to-end tests stay fast.
class FlakyWorker
  include Sidekiq::Worker
  sidekiq_options retry: 5
  sidekiq_retry_in { |_count, _exception| 1 }

  class Flake < StandardError; end

  def perform(key, failures)
    done_before = JobRun.where(jid: jid, kind: "flaky").count
    if done_before < failures
      JobRun.record!(self, kind: "flaky", args: [key, failures], status: "failed")
      raise Flake, "flaky #{key}: failure #{done_before + 1} of #{failures}"
    end
    JobRun.record!(self, kind: "flaky", args: [key, failures])
  end
end
