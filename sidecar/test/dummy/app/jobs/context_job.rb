# frozen_string_literal: true

# Records the execution context it runs in.
class ContextJob
  include Sidekiq::Worker

  attr_accessor :bid

  def perform(*args)
    Recorder.add(:context, {
      "args" => args,
      "jid" => jid,
      "bid" => bid,
      "middleware" => Thread.current[:middleware_context],
      "executor_active" => Rails.application.executor.active?,
      "current_before" => Current.marker,
      "sidekiq_context" => Sidekiq::Context.current.dup,
      "idempotency_key" => Fastworker::Sidecar.current_idempotency_key
    })
    Current.marker = "set by #{jid}"
    Sidekiq.logger.info("hello from ContextJob #{args.inspect}")
    Rails.logger.info("rails logger line from ContextJob")
  end
end
