# frozen_string_literal: true

module Fastworker
  module Sidecar
    # ThreadUsage: how many times the calling thread gave up the CPU of its own accord (it
    # blocked: a socket read, a sleep, a lock), from getrusage(RUSAGE_THREAD). JobWaits needs it
    # because wall time minus CPU time also holds the moments the OS ran another process: on a
    # busy machine a no-op job "waits" a third of what it computes that way, and was run on
    # helper threads that only cost it GVL hand-overs. A job that never blocked did not wait.
    #
    # `voluntary_switches` => Integer, or nil where getrusage or Fiddle is not available (the
    # caller then trusts wall minus CPU, as before).
    module ThreadUsage
      RUSAGE_THREAD = 1 # Linux
      RUSAGE_SIZE = 144 # struct rusage on 64-bit Linux: two timevals, then 14 longs
      NVCSW_OFFSET = 128 # ru_nvcsw, the 13th long

      def self.load_getrusage
        return nil unless RUBY_PLATFORM.include?("linux")

        require "fiddle"
        return nil unless Fiddle::SIZEOF_LONG == 8 # the offsets above

        Fiddle::Function.new(Fiddle.dlopen(nil)["getrusage"], [Fiddle::TYPE_INT, Fiddle::TYPE_VOIDP], Fiddle::TYPE_INT)
      rescue LoadError, StandardError # no libffi, or no such symbol
        nil
      end
      GETRUSAGE = load_getrusage

      def self.voluntary_switches
        return nil unless GETRUSAGE

        buf = (Thread.current[:fastworker_rusage] ||= Fiddle::Pointer.malloc(RUSAGE_SIZE, Fiddle::RUBY_FREE))
        return nil unless GETRUSAGE.call(RUSAGE_THREAD, buf).zero?

        buf[NVCSW_OFFSET, 8].unpack1("q")
      end
    end
  end
end
