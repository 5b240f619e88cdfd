# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Exhausted: the Ruby half of "this job is dead", after the worker decided so.
    #
    # Duties (Sidekiq's JobRetry#retries_exhausted, 7.2–8.0.6 semantics):
    # 1. Rebuild the exception from the reported class and message (RemoteError.build).
    # 2. Run `sidekiq_retries_exhausted { |job, ex| }` (from the `wrapped` class when it
    #    defines one, else the job class) with the worker's updated job hash; its errors go
    #    to the error handlers. It is skipped, as in Sidekiq, when the job never had retries
    #    (`retry` false/nil: JobRetry#global only calls the death handlers), when the error
    #    happened before the job instance existed (`error.stage == "global"`, as the 422 said),
    #    or when the worker sends `"run_exhausted_block": false`.
    # 3. If the block returned :discard, report "discard" and skip the death handlers
    #    (Sidekiq 7.2.0–8.0.6; 8.0.7+ would still run them). Otherwise run every death handler
    #    with (job, exception), each one's errors reported and the others still run.
    # 4. Everything runs inside the Rails reloader (a unit of work, like a job) and the
    #    job's logging context. The sidecar never writes the dead set: the worker does.
    class Exhausted
      def call(job, error, run_block: true)
        result = nil
        ran = 0
        logger = Compat.job_logger
        logger.prepare(job) do
          Compat.reloader.call do
            exception = RemoteError.build(error["class"], error["message"], error["backtrace"])
            job_class = lookup(job["class"])
            result = run_exhausted_block(job, job_class, exception, error) if run_block
            ran = run_death_handlers(job, exception) unless result == "discard"
          end
        end
        {"jid" => job["jid"], "status" => "done", "result" => result, "death_handlers" => ran}
      end

      private

      def lookup(name)
        Compat.constantize(name)
      rescue NameError
        nil
      end

      def run_exhausted_block(job, job_class, exception, error)
        return nil if error["stage"] == "global"
        return nil unless RetryAdvice.new(job, job_class).retry_option

        block = Compat.hook_block(job, job_class, :sidekiq_retries_exhausted_block)
        return nil unless block

        (block.call(job, exception) == :discard) ? "discard" : nil
      rescue => e
        Compat.handle_exception(e, {context: "Error calling retries_exhausted", job: job})
        nil
      end

      def run_death_handlers(job, exception)
        Compat.death_handlers.count do |handler|
          handler.call(job, exception)
          true
        rescue => e
          Compat.handle_exception(e, {context: "Error calling death handler", job: job})
          true
        end
      end
    end
  end
end
