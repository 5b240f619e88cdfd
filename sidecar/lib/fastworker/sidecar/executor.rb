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
    # 7. Batches: the same steps per job, one job after the other on one thread (#batch), or
    #    each job on the thread that takes it when a batch runs its jobs at once (#together_call).
    # 8. Cancellation: each admitted job is registered with its jid and its request's socket,
    #    so that POST /cancel and a closed connection (DisconnectWatch) stop it with
    #    Sidekiq::Shutdown; the rest of a cancelled batch is not admitted.
    # The reloader, job logger and middleware chain are looked up once (see Setup); what runs
    # per job is what Sidekiq's Processor runs per job.
    class Executor
      # What every job runs inside, resolved once, on the first admitted job: by then the app
      # has booted and its `configure_server` blocks (reloader, middleware) have run, which is
      # not yet true when the Executor is built. Sidekiq's Processor also resolves its
      # reloader and job logger once, when it is created.
      Setup = Struct.new(:reloader, :job_logger, :middleware, :job_log, :context_setter)
      # Built once: Thread.handle_interrupt would otherwise get a new Hash per job.
      DEFER_SHUTDOWN = {::Sidekiq::Shutdown => :never}.freeze
      TAKE_SHUTDOWN = {::Sidekiq::Shutdown => :immediate}.freeze

      def initialize(drain, watch: DisconnectWatch.new(drain))
        @drain = drain
        @watch = watch
        @setup = nil
      end

      # Admits the job through the Drain (503 when booting, draining or at capacity), runs it,
      # and releases its slot whatever happens. Returns its Result. `socket`: the request's
      # connection, watched while the job runs (nil: not watched).
      def call(job, raw, idempotency_key: nil, socket: nil)
        result = nil
        shutdown_deferred { result = run(job, raw, idempotency_key, socket) }
        result || Result.shutdown(job["jid"])
      ensure
        @drain.request_done
      end

      # Several jobs on this thread: yields a runner; `runner.call(job, raw, key)` admits and
      # runs one job as #call does and returns its Result. One deferral of Sidekiq::Shutdown
      # covers the whole batch: a hard stop still interrupts only a running job, and one that
      # arrives between jobs is swallowed at the end (no later job is admitted after a drain
      # began, which a hard stop always follows).
      def batch(socket: nil)
        shutdown_deferred { yield ->(job, raw, key) { run_one(job, raw, key, socket) } }
      ensure
        @drain.request_done
      end

      # One job of a batch run at the same time as others (JobThreads), on whichever thread
      # takes it: as #call, with a deferral of Sidekiq::Shutdown of its own. Returns the Result
      # and whether POST /cancel or a closed connection stopped it (then the rest of its batch
      # is not run); the thread's mark of that is cleared for the next job it takes.
      def together_call(job, raw, key, socket)
        result = nil
        shutdown_deferred { result = run_one(job, raw, key, socket) }
        [result || Result.shutdown(job["jid"]), @drain.take_cancelled]
      end

      private

      # A hard stop raises Sidekiq::Shutdown only in admitted threads, and such a thread only
      # takes it inside `execute`: everywhere else here the interrupt is deferred, and one that
      # arrives after `execute` returned is swallowed so the job's own result stands.
      def shutdown_deferred
        Thread.handle_interrupt(DEFER_SHUTDOWN) { yield }
      rescue ::Sidekiq::Shutdown
        # Arrived after the job had finished: its own result stands.
      end

      def run_one(job, raw, idempotency_key, socket)
        run(job, raw, idempotency_key, socket) || Result.shutdown(job["jid"])
      rescue ::Sidekiq::Shutdown
        # Escaped the job (e.g. raised in its error handlers): not attempted, requeued.
        Result.shutdown(job["jid"])
      end

      # Inside shutdown_deferred only. nil when a Sidekiq::Shutdown ended the job.
      def run(job, raw, idempotency_key, socket = nil)
        admission = @drain.admit(job["jid"], socket)
        return Result.unavailable(admission, job["jid"]) unless admission == :ok

        @watch.ensure_running if socket

        begin
          Thread.handle_interrupt(TAKE_SHUTDOWN) do
            execute(job, raw, idempotency_key)
          end
        ensure
          @drain.release
        end
      end

      def setup
        @setup ||= Setup.new(Compat.reloader, Compat.job_logger, Compat.server_middleware, Sidecar.job_log?,
          Compat.context_setter?).freeze
      end

      def execute(job, raw, idempotency_key)
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        setup = self.setup
        jid = job["jid"]
        state = [false, nil] # [the instance existed (stage local), the retry advice]
        Thread.current[IDEMPOTENCY_KEY] = (idempotency_key.nil? || idempotency_key.empty?) ? jid : idempotency_key
        queue = job["queue"]
        queue = "default" unless queue.is_a?(String)
        begin
          logger = setup.job_logger
          logger.prepare(job) do
            if setup.job_log
              logger.call(job, queue) { dispatch(setup, job, raw, queue, state) }
            else
              dispatch(setup, job, raw, queue, state)
            end
          end
          Result.done(jid, elapsed_ms(started))
        rescue Exception => e # rubocop:disable Lint/RescueException -- Sidekiq's retry rescues everything
          # not a job class: it can never succeed, so no retry is spent (400: the dead set)
          return Result.bad_request(e.message) if e.is_a?(JobClass::NotAJob)
          # shutdown: not attempted as far as retries go; the worker requeues it.
          return Result.shutdown(jid) if Compat.shutdown?(e)
          # skip (7.3+ iteration interrupt): acked, no error.
          return Result.done(jid, elapsed_ms(started), "skipped" => true) if Compat.skip?(e)

          # failed: the job spends a retry; the worker decides retry or dead.
          failed(job, raw, e, state, started)
        ensure
          Thread.current[IDEMPOTENCY_KEY] = nil
        end
      end

      def dispatch(setup, job, raw, queue, state)
        setup.reloader.call do
          klass = JobClass.check!(Compat.constantize(job["class"]), job) # only jobs are instantiated
          instance = klass.new
          instance.jid = job["jid"]
          instance.bid = job["bid"] if instance.respond_to?(:bid=)
          instance._context = @drain if setup.context_setter && instance.respond_to?(:_context=)
          state[0] = true
          begin
            setup.middleware.invoke(instance, job, queue) do
              instance.perform(*job["args"])
            end
          rescue Exception => e # rubocop:disable Lint/RescueException
            raise if Compat.shutdown?(e) || Compat.skip?(e)

            # As JobRetry#local: the hooks see a fresh parse of the original payload.
            state[1] = RetryAdvice.new(Sidekiq.load_json(raw), klass).to_h(e)
            raise
          end
        end
      end

      def failed(job, raw, exception, state, started)
        body = {"jid" => job["jid"]}
        body.merge!(ErrorReport.new(exception, job).to_h)
        body.merge!(state[1] || {"retry_in" => nil, "retry" => job["retry"]})
        body["stage"] = state[0] ? "local" : "global"
        body["runtime_ms"] = elapsed_ms(started)
        Compat.with_app_executor do
          Compat.handle_exception(exception, {context: "Job raised exception", job: job, jobstr: raw})
        end
        sealed = Failures.keep(job["jid"], exception) # for its exhaustion hooks, should the worker decide so
        body["exception"] = sealed if sealed
        Result.failed(body)
      end

      def elapsed_ms(started)
        ((Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000).round(3)
      end
    end
  end
end
