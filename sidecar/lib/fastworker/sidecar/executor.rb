# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Executor: runs one admitted job the way Sidekiq's Processor#dispatch does, minus
    # everything that touches Redis (the worker owns fetch, retry, dead set and stats).
    #
    # Duties, in order (compat §6.1 steps 2, 4, 7–9):
    # 1. Logging context: JobLogger#prepare (jid, class = display_class || wrapped || class,
    #    bid, tags, the job's log_level); Sidekiq's own start/done lines only when
    #    FASTWORKER_SIDECAR_JOB_LOG=1.
    # 2. The Idempotency-Key header, readable by the job as
    #    Fastworker::Sidecar.current_idempotency_key.
    # 3. The reloader (Rails: executor + code reloading, AR connections returned, query
    #    cache, CurrentAttributes reset) around: constantize, `new`, `jid=`, `bid=` when the
    #    instance takes it, `_context=` (Sidekiq 7.3+), then the server middleware chain
    #    around `perform(*args)`.
    # 4. Classify: done (also when a middleware did not yield), shutdown (Sidekiq::Shutdown
    #    in the cause chain: requeue, not an error), failed. A failure before the instance
    #    existed ("global", e.g. an unknown class) gets no class retry hooks, as in Sidekiq.
    # 5. On failure: the error report, the retry advice (computed inside the reloader while
    #    the exception is alive), then Sidekiq's error handlers with Sidekiq's context hash.
    # 6. Admission: take a Drain slot (or answer 503), always give it back, and never let a
    #    late Sidekiq::Shutdown (raised by a hard stop just as the job finished) escape into Puma.
    class Executor
      def initialize(drain)
        @drain = drain
      end

      # Admits the job through the Drain (503 when booting, draining or at capacity), runs it,
      # and releases its slot whatever happens. A hard stop raises Sidekiq::Shutdown only in
      # admitted threads, and such a thread only takes it inside `execute`: everywhere else
      # here the interrupt is deferred, and one that arrives after `execute` returned is
      # swallowed so the job's own result stands.
      def call(job, raw, idempotency_key: nil)
        result = nil
        begin
          Thread.handle_interrupt(::Sidekiq::Shutdown => :never) do
            admission = @drain.admit
            if admission == :ok
              begin
                result = Thread.handle_interrupt(::Sidekiq::Shutdown => :immediate) do
                  execute(job, raw, idempotency_key)
                end
              ensure
                @drain.release
              end
            else
              result = Result.unavailable(admission, job["jid"])
            end
          end
        rescue ::Sidekiq::Shutdown
          # Arrived after the job had finished: its own result stands.
        end
        result || Result.shutdown(job["jid"])
      end

      private

      def execute(job, raw, idempotency_key)
        started = monotonic
        state = {local: false, advice: nil}
        Thread.current[IDEMPOTENCY_KEY] = (idempotency_key.nil? || idempotency_key.empty?) ? job["jid"] : idempotency_key
        queue = job["queue"].is_a?(String) ? job["queue"] : "default"
        begin
          in_logging_context(job, queue) { dispatch(job, raw, queue, state) }
          Result.done(job["jid"], elapsed_ms(started))
        rescue Exception => e # rubocop:disable Lint/RescueException -- Sidekiq's retry rescues everything
          # not a job class: it can never succeed, so no retry is spent (400: the dead set)
          return Result.bad_request(e.message) if e.is_a?(JobClass::NotAJob)
          # shutdown: not attempted as far as retries go; the worker requeues it.
          return Result.shutdown(job["jid"]) if Compat.shutdown?(e)
          # skip (7.3+ iteration interrupt): acked, no error.
          return Result.done(job["jid"], elapsed_ms(started), "skipped" => true) if Compat.skip?(e)

          # failed: the job spends a retry; the worker decides retry or dead.
          failed(job, raw, e, state, started)
        ensure
          Thread.current[IDEMPOTENCY_KEY] = nil
        end
      end

      def in_logging_context(job, queue, &block)
        logger = Compat.job_logger
        logger.prepare(job) do
          Sidecar.job_log? ? logger.call(job, queue, &block) : yield
        end
      end

      def dispatch(job, raw, queue, state)
        Compat.reloader.call do
          klass = JobClass.check!(Compat.constantize(job["class"]), job) # only jobs are instantiated
          instance = klass.new
          instance.jid = job["jid"]
          instance.bid = job["bid"] if instance.respond_to?(:bid=)
          instance._context = @drain if instance.respond_to?(:_context=)
          state[:local] = true
          begin
            Compat.server_middleware.invoke(instance, job, queue) do
              instance.perform(*job["args"])
            end
          rescue Exception => e # rubocop:disable Lint/RescueException
            raise if Compat.shutdown?(e) || Compat.skip?(e)

            # As JobRetry#local: the hooks see a fresh parse of the original payload.
            state[:advice] = RetryAdvice.new(Sidekiq.load_json(raw), klass).to_h(e)
            raise
          end
        end
      end

      def failed(job, raw, exception, state, started)
        body = {"jid" => job["jid"]}
        body.merge!(ErrorReport.new(exception, job).to_h)
        body.merge!(state[:advice] || {"retry_in" => nil, "retry" => job["retry"]})
        body["stage"] = state[:local] ? "local" : "global"
        body["runtime_ms"] = elapsed_ms(started)
        Compat.with_app_executor do
          Compat.handle_exception(exception, {context: "Job raised exception", job: job, jobstr: raw})
        end
        Result.failed(body)
      end

      def elapsed_ms(started)
        ((monotonic - started) * 1000).round(3)
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
