# frozen_string_literal: true

# ActiveJob class with Sidekiq retry hooks (honoured through "wrapped", Sidekiq 7.1.3+).
class AjHooksJob < ApplicationJob
  sidekiq_options retry: 3
  sidekiq_retry_in { |count, _ex| 77 + count }
  sidekiq_retries_exhausted { |job, ex| Recorder.add(:exhausted, {"aj" => true, "wrapped" => job["wrapped"], "message" => ex.message}) }

  def perform(*)
    raise "aj failure"
  end
end
