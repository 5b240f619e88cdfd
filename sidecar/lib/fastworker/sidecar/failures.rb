# frozen_string_literal: true

module Fastworker
  module Sidecar
    # Failures: the live exception of each job that failed in this process, kept for a while, so
    # that its exhaustion hooks (a later /exhausted request, after the worker decided) get the
    # real exception object, its own attributes, cause and backtrace intact, as Sidekiq's
    # JobRetry hands them over. Bounded: the oldest go first beyond LIMIT, and any older than
    # TTL seconds; a hook whose exception is gone gets one rebuilt from the report (RemoteError).
    module Failures
      LIMIT = 1000
      TTL = 600
      LOCK = Mutex.new
      @kept = {} # jid => [exception, monotonic time], oldest first

      module_function

      def keep(jid, exception)
        return unless jid.is_a?(String)

        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        LOCK.synchronize do
          @kept.delete(jid)
          @kept[jid] = [exception, now]
          @kept.shift while @kept.size > LIMIT
          @kept.shift while (first = @kept.first) && now - first[1][1] > TTL
        end
      end

      # The exception kept for jid, or nil; ``forget: true`` drops it (its last hook ran).
      def fetch(jid, forget: false)
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        LOCK.synchronize do
          exception, at = @kept[jid]
          @kept.delete(jid) if forget
          (at && now - at <= TTL) ? exception : nil
        end
      end

      def clear
        LOCK.synchronize { @kept.clear }
      end
    end
  end
end
