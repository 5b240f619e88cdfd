# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Drain: admission control and lifecycle of one sidecar process.
    #
    # Duties:
    # 1. Hold the state: :booting → :ready → :draining (/health answers 503 outside :ready).
    # 2. Admit a /perform only when :ready and fewer than `capacity` jobs run (a mutex
    #    counter). Refusals become 503s: the worker requeues and no retry is spent, and
    #    nothing ever queues without bound behind Puma's threads.
    # 3. Remember which threads run admitted jobs, so a hard stop can raise
    #    Sidekiq::Shutdown in them (Sidekiq's Manager#hard_shutdown does the same).
    # 4. Drain on TERM: stop admitting, wait up to the timeout for in-flight jobs, then
    #    interrupt the stragglers and give their `ensure` blocks a few seconds.
    # 5. Stop the jobs the worker gave back (POST /cancel with their jids, or the request's
    #    connection closed, see DisconnectWatch): raise Sidekiq::Shutdown in their threads, as
    #    Sidekiq's hard shutdown does, and mark the thread so that the rest of its batch is not
    #    admitted. Otherwise a job the worker requeued would keep running here and run twice.
    #
    # `begin_drain!` and `draining?` are plain reads/writes, safe inside a signal trap
    # (where Mutex#synchronize is not allowed); everything that waits runs on a thread.
    class Drain
      HARD_STOP_GRACE = 3

      attr_reader :capacity, :state

      def initialize(capacity:)
        raise ArgumentError, "capacity must be >= 1" unless capacity.to_i >= 1

        @capacity = capacity.to_i
        @state = :booting
        @lock = Mutex.new
        @idle = ConditionVariable.new
        @running = {} # Thread => Entry, for admitted requests
      end

      # What an admitted job's thread is running: its jid, the request's socket (to notice the
      # worker hanging up), and whether it was cancelled.
      Entry = Struct.new(:jid, :socket, :cancelled)
      CANCELLED = :fastworker_cancelled

      def ready!
        @state = :ready if @state == :booting
      end

      def ready?
        @state == :ready
      end

      def draining?
        @state == :draining
      end

      # The Lifecycle that knows when the workers quiet (set by Lifecycle.new).
      attr_accessor :lifecycle

      # What a Sidekiq 7.3+ job's `_context.stopping?` asks (IterableJob checkpoints): the
      # sidecar drains, or its workers quieted or are stopping.
      def stopping?
        draining? || (!@lifecycle.nil? && @lifecycle.stopping?)
      end

      def begin_drain!
        @state = :draining
      end

      def in_flight
        @lock.synchronize { @running.size }
      end

      # :ok (the caller must #release), or why not: :booting, :draining, :at_capacity,
      # :cancelled (this thread's request was cancelled: the rest of its batch is not run).
      def admit(jid = nil, socket = nil)
        @lock.synchronize do
          return @state unless @state == :ready
          return :cancelled if Thread.current.thread_variable_get(CANCELLED)
          return :at_capacity if @running.size >= @capacity

          @running[Thread.current] = Entry.new(jid, socket, false)
          :ok
        end
      end

      # A request (one /perform or one /perform_batch) starts and ends on its thread.
      def request_done
        Thread.current.thread_variable_set(CANCELLED, nil)
      end

      # Whether this thread's job was cancelled (a job of a batch run at once: JobThreads), and
      # clear the mark, so that the next job it takes is admitted.
      def take_cancelled
        cancelled = Thread.current.thread_variable_get(CANCELLED)
        Thread.current.thread_variable_set(CANCELLED, nil) if cancelled
        cancelled ? true : false
      end

      # Raises Sidekiq::Shutdown in the threads running these jids and waits up to `grace`
      # seconds for them to end. Returns {"stopped" => [...], "running" => [...],
      # "unknown" => [...]}: unknown jids run nowhere in this process (finished, never came,
      # or in another Puma worker).
      def cancel(jids, grace)
        wanted = jids.map(&:to_s)
        hit = @lock.synchronize do
          @running.select { |_, e| wanted.include?(e.jid) }.each { |t, e| interrupt!(t, e) }.values.map(&:jid)
        end
        deadline = monotonic + grace
        running = hit
        loop do
          running = @lock.synchronize { @running.values.map(&:jid) & hit }
          break if running.empty? || monotonic >= deadline

          sleep 0.01
        end
        {"stopped" => hit - running, "running" => running, "unknown" => wanted - hit}
      end

      # For DisconnectWatch: interrupts each running job whose request's connection the
      # given block says is gone; returns the jids interrupted.
      def cancel_where
        @lock.synchronize do
          gone = @running.select { |_, e| !e.cancelled && e.socket && yield(e.socket) }
          gone.each { |t, e| interrupt!(t, e) }
          gone.values.map(&:jid)
        end
      end

      def watched?
        @lock.synchronize { @running.each_value.any?(&:socket) }
      end

      def release
        @lock.synchronize do
          @running.delete(Thread.current)
          @idle.broadcast if @running.empty?
        end
      end

      # true when no job runs any more, false when the timeout passed first.
      def wait_idle(timeout)
        deadline = monotonic + timeout
        @lock.synchronize do
          until @running.empty?
            remaining = deadline - monotonic
            return false if remaining <= 0

            @idle.wait(@lock, remaining)
          end
          true
        end
      end

      # Raises `error_class` in every thread still running a job. Done under the lock, so a
      # thread that already released its job is never hit.
      def interrupt_running(error_class)
        @lock.synchronize do
          @running.each_key { |thread| thread.raise(error_class) if thread.alive? }
          @running.size
        end
      end

      # The whole stop sequence; returns true when every job finished on its own.
      def drain(timeout)
        begin_drain!
        return true if wait_idle(timeout)

        Compat.logger.warn("fastworker-sidecar: #{in_flight} job(s) still running after #{timeout}s, raising Sidekiq::Shutdown")
        interrupt_running(::Sidekiq::Shutdown)
        wait_idle(HARD_STOP_GRACE)
        false
      end

      private

      # Under the lock. The job's thread takes Sidekiq::Shutdown only inside the job itself
      # (Executor); the mark keeps the rest of its batch from being admitted.
      def interrupt!(thread, entry)
        thread.thread_variable_set(CANCELLED, true)
        return if entry.cancelled

        entry.cancelled = true
        thread.raise(::Sidekiq::Shutdown) if thread.alive?
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
