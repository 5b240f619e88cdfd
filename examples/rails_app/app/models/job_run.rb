# frozen_string_literal: true

# What one execution of a job saw: jid, arguments, the model it loaded, ActiveJob's
# provider_job_id, the server middleware's context, the sidecar's Idempotency-Key, attempt.
class JobRun < ApplicationRecord
  # job: the Sidekiq::Worker instance or the ActiveJob instance that is running.
  def self.record!(job, kind:, args:, status: "performed", model_id: nil, details: {})
    middleware = Demo::RecordingMiddleware.current
    retry_count = middleware && middleware["retry_count"]
    create!(
      jid: middleware ? middleware["jid"] : job.try(:jid),
      job_class: job.class.name,
      kind: kind,
      status: status,
      args_json: JSON.generate(args),
      provider_job_id: job.try(:provider_job_id),
      model_id: model_id,
      middleware_context: middleware && JSON.generate(middleware),
      idempotency_key: (Fastworker::Sidecar.current_idempotency_key if defined?(Fastworker::Sidecar)),
      attempt: retry_count.nil? ? 1 : retry_count.to_i + 2,
      details: JSON.generate(details)
    )
  end

  def as_json(*)
    super.merge(
      "args" => JSON.parse(args_json || "null"),
      "middleware_context" => middleware_context && JSON.parse(middleware_context),
      "details" => details && JSON.parse(details)
    ).except("args_json")
  end
end
