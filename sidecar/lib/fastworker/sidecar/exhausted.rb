# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Exhausted: the Ruby half of "this job is dead", after the worker decided so.
    #
    # Duties (Sidekiq's JobRetry#retries_exhausted, 7.2–8.0.6 semantics):
    # 1. The exception: the job's live one when this process ran it and still holds it, else
    #    the one sealed in the 422 answer that the worker hands back (Failures), else one rebuilt
    #    from the reported class and message (RemoteError.build).
    # 2. Phase "block" (or "all"): run `sidekiq_retries_exhausted { |job, ex| }` (from the
    #    `wrapped` class when it defines one, else the job class) with the worker's updated job
    #    hash; its errors go to the error handlers. It is skipped, as in Sidekiq, when the job
    #    never had retries (`retry` false/nil: JobRetry#global only calls the death handlers),
    #    when the error happened before the job instance existed (`error.stage == "global"`, as
    #    the 422 said), or when the worker sends `"run_exhausted_block": false`. If it returned
    #    :discard, report "discard".
    # 3. Phase "death" (or "all", unless the block said discard): every death handler with (job,
    #    exception), each one's errors reported and the others still run. The worker asks for it
    #    after its dead-set write, so a handler finds the job in the dead set, as under Sidekiq.
    # 4. Everything runs inside the Rails reloader (a unit of work, like a job) and the
    #    job's logging context. The sidecar never writes the dead set: the worker does.
    class Exhausted
      PHASES = %w[all block death].freeze

      # phase: one of PHASES (Payload.parse_exhausted refuses any other)
      def call(job, error, run_block: true, phase: "all")
        result = nil
        ran = 0
        logger = Compat.job_logger
        logger.prepare(job) do
          Compat.reloader.call do
            job_class = lookup(job["class"]) # first: an app's exception class may load with it
            exception = Failures.fetch(job["jid"], sealed: error["exception"], forget: phase != "block") ||
              RemoteError.build(error["class"], error["message"], error["backtrace"])
            result = run_exhausted_block(job, job_class, exception, error) if run_block && phase != "death"
            ran = run_death_handlers(job, exception) unless result == "discard" || phase == "block"
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
