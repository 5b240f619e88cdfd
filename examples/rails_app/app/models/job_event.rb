# frozen_string_literal: true

# A hook that fired: "exhausted" (sidekiq_retries_exhausted), "death" (death handler),
# "error" (error handler).
class JobEvent < ApplicationRecord
  def self.record!(event, job, exception, details = {})
    job ||= {}
    create!(
      event: event,
      jid: job["jid"],
      job_class: job["wrapped"] || job["class"],
      error_class: exception&.class&.name,
      error_message: exception&.message.to_s[0, 1000],
      details: JSON.generate(details.merge("retry_count" => job["retry_count"], "queue" => job["queue"],
                                           "error_message_in_job" => job["error_message"]))
    )
  end

  def as_json(*)
    super.merge("details" => details && JSON.parse(details))
  end
end
