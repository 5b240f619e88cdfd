# frozen_string_literal: true

module Demo
  # Sidekiq error and death handlers: each records a JobEvent row.
  module Handlers
    module_function

    def on_error(exception, context)
      job = context[:job] || {}
      JobEvent.record!("error", job, exception, "context" => context[:context])
    rescue => e
      Sidekiq.logger.warn("demo error handler failed: #{e.class}: #{e.message}")
    end

    def on_death(job, exception)
      JobEvent.record!("death", job, exception, seen(job, exception))
    end

    # What a hook was handed: the exception's own class and attributes, its cause, and whether
    # the job is in the dead set at that moment.
    def seen(job, exception)
      require "sidekiq/api"
      {"exception_class" => exception.class.name, "cause" => exception.cause&.message,
       "tenant" => (exception.tenant if exception.respond_to?(:tenant)),
       "in_dead_set" => !Sidekiq::DeadSet.new.find_job(job["jid"]).nil?}
    end
  end
end
