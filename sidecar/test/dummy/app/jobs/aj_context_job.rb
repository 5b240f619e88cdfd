# frozen_string_literal: true

class AjContextJob < ApplicationJob
  def perform(value, label:, count: 1)
    Recorder.add(:aj, {"value" => value, "label" => label, "count" => count, "provider_job_id" => provider_job_id,
                       "job_id" => job_id, "sidekiq_context" => Sidekiq::Context.current.dup})
  end
end
