# frozen_string_literal: true

# ActiveJob's own retry_on / discard_on, which act inside Ruby: retry_on re-enqueues a new
# Sidekiq job (new jid, through the schedule set); Sidekiq sees each attempt as a success.
class RetryOnJob < ApplicationJob
  class Flaky < StandardError; end
  class Hopeless < StandardError; end

  retry_on Flaky, wait: 1.second, attempts: 5
  discard_on Hopeless

  def perform(mode, failures)
    status = "performed"
    status = "failed" if mode == "hopeless" || (mode == "flaky" && executions <= failures)
    JobRun.record!(self, kind: "retry_on", args: [mode, failures], status: status, details: {"executions" => executions})
    raise Hopeless, "hopeless" if mode == "hopeless"
    raise Flaky, "execution #{executions} of #{failures + 1}" if status == "failed"
  end
end
