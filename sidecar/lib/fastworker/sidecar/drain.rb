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
        @running = {} # Thread => true, for admitted requests
      end

      def ready!
        @state = :ready if @state == :booting
      end

      def ready?
        @state == :ready
      end

      def draining?
        @state == :draining
      end

      # What a Sidekiq 7.3+ job's `_context.stopping?` asks (IterableJob checkpoints).
      def stopping?
        draining?
      end

      def begin_drain!
        @state = :draining
      end

      def in_flight
        @lock.synchronize { @running.size }
      end

      # :ok (the caller must #release), or why not: :booting, :draining, :at_capacity.
      def admit
        @lock.synchronize do
          return @state unless @state == :ready
          return :at_capacity if @running.size >= @capacity

          @running[Thread.current] = true
          :ok
        end
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

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
