# frozen_string_literal: true

# An ActiveJob with Sidekiq retry hooks. Sidekiq 7.1.3+ (and the fastworker sidecar) take
# them from the `wrapped` class; Sidekiq 6.4.1 itself ignores them.
class AjHooksJob < ApplicationJob
  sidekiq_options retry: 1
  sidekiq_retry_in { |_count, _exception| 1 }
  sidekiq_retries_exhausted { |job, exception| JobEvent.record!("exhausted", job, exception) }

  def perform
    JobRun.record!(self, kind: "aj_hooks", args: [], status: "failed")
    raise "aj hooks job fails"
  end
end
