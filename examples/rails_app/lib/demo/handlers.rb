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
      JobEvent.record!("death", job, exception)
    end
  end
end
