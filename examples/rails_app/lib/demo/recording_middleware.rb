# frozen_string_literal: true

module Demo
  # A Sidekiq server middleware: publishes what it saw of the job to the job (through a
  # thread-local), and JobRun.record! stores it. Proves the app's server chain runs.
  class RecordingMiddleware
    KEY = :demo_middleware_context

    def self.current
      Thread.current[KEY]
    end

    def call(worker, job, queue)
      Thread.current[KEY] = {
        "middleware" => self.class.name,
        "queue" => queue,
        "jid" => job["jid"],
        "class" => job["class"],
        "wrapped" => job["wrapped"],
        "retry_count" => job["retry_count"],
        "trace_id" => job["trace_id"],
        "worker_class" => worker.class.name,
        "worker_jid" => worker.jid
      }
      yield
    ensure
      Thread.current[KEY] = nil
    end
  end
end
