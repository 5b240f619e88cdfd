# frozen_string_literal: true

require "socket"

module Fastworker
  module Sidecar
    # DisconnectWatch: a job whose worker hung up stops running.
    #
    # Duties:
    # 1. While jobs run with a known request socket (Puma's env["puma.socket"]), look at those
    #    sockets every INTERVAL seconds on one background thread per process.
    # 2. A socket whose peer closed it (a non-destructive peek reads EOF, or the socket errors)
    #    means the worker abandoned the request: its hard shutdown at --timeout, its hang
    #    watchdog, or --job-timeout cancel the request, which closes the connection, and put the
    #    job back. The Drain then raises Sidekiq::Shutdown in the job's thread, as Sidekiq's hard
    #    shutdown does, so the job never runs on while its requeued copy runs elsewhere.
    # Why a peek is safe: the bytes are left in place. Readable bytes during a job are EOF, or
    # the next request the worker pipelined (PumaPipelining), behind which a FIN shows only in
    # the TCP state (peer_finished?).
    # This works in every Puma worker process, since the job runs where its connection is; the
    # worker's POST /cancel (App) is the explicit path, this is the safety net.
    class DisconnectWatch
      INTERVAL = 0.1

      def initialize(drain, interval: INTERVAL)
        @drain = drain
        @interval = interval
        @lock = Mutex.new
        @thread = nil
      end

      # Called when a job with a socket is admitted: makes sure the watcher runs in this
      # process (a Puma cluster worker starts its own after the fork).
      def ensure_running
        return if @thread&.alive?

        @lock.synchronize do
          return if @thread&.alive?

          @thread = Thread.new { run }
          @thread.name = "fastworker-disconnect-watch" if @thread.respond_to?(:name=)
        end
      end

      # One look at every watched socket; returns the jids interrupted.
      def tick
        jids = @drain.cancel_where { |socket| self.class.closed?(socket) }
        Compat.logger.warn("fastworker-sidecar: the worker closed the connection of running job(s) #{jids.join(", ")}: raising Sidekiq::Shutdown") unless jids.empty?
        jids
      end

      def self.closed?(socket)
        return true if socket.closed?

        peeked = socket.recv_nonblock(1, ::Socket::MSG_PEEK, exception: false)
        return true if peeked.nil? || peeked == ""
        return false unless peeked.is_a?(String) # :wait_readable: nothing sent, still open

        peer_finished?(socket) # a pipelined request waits in front of a possible FIN
      rescue IOError, SystemCallError
        true
      rescue NoMethodError, NotImplementedError
        false # not a plain socket (e.g. TLS): cannot tell, never cancel
      end

      TCP_CLOSE_WAIT = 8 # linux/tcp_states.h: the peer sent FIN, we have not closed yet

      # Bytes waiting (the worker pipelines /perform_batch requests) hide an EOF from a peek;
      # the TCP state still tells that the worker hung up. Not a TCP socket: cannot tell.
      def self.peer_finished?(socket)
        return false unless defined?(::Socket::TCP_INFO)

        info = socket.getsockopt(::Socket::IPPROTO_TCP, ::Socket::TCP_INFO).data
        info.getbyte(0) == TCP_CLOSE_WAIT
      rescue IOError, SystemCallError, NoMethodError
        false
      end

      private

      def run
        loop do
          sleep @interval
          tick if @drain.watched?
        rescue => e
          Compat.logger.warn("fastworker-sidecar: disconnect watch: #{e.class}: #{e.message}")
        end
      end
    end
  end
end
