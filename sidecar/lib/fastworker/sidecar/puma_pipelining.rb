# frozen_string_literal: true

require "stringio"

module Fastworker
  module Sidecar
    # PumaPipelining: lets the worker pipeline /perform_batch requests on one keep-alive
    # connection (HTTP/1.1 pipelining), so one Puma thread runs the next batch the moment it
    # has answered the last one.
    #
    # Why: two batches in flight on two connections make two Puma threads fight for the GVL,
    # which cost the sidecar ~250 µs more per request on the project's machine; one batch at a
    # time leaves Ruby idle while the worker turns the answer round. Pipelined, one thread
    # takes the requests in turn with no thread switch (design.md, "Pipelined batches").
    #
    # Duties:
    # 1. Puma 5.x reads a request whose body arrived together with the next request into one
    #    rack.input and drops the rest of the buffer (Client#setup_body, the `remain <= 0`
    #    branch). Keep the surplus bytes as the buffer the next request is parsed from, and the
    #    body to its Content-Length.
    # 2. Say how many requests the worker may have in flight on one connection (`depth`, for
    #    /health): DEPTH with the fix in place, 1 on a Puma this fix does not know (the worker
    #    then sends one request per connection at a time, as before).
    module PumaPipelining
      DEPTH = 2

      def self.install!
        require "puma"
        require "puma/server"
        return false unless applicable?

        ::Puma::Client.prepend(ClientFix) unless ::Puma::Client.ancestors.include?(ClientFix)
        true
      end

      def self.applicable?
        ::Puma::Const::PUMA_VERSION.split(".").first.to_i == 5 && ::Puma::Client.private_method_defined?(:setup_body)
      end

      def self.depth
        defined?(::Puma::Client) && ::Puma::Client.ancestors.include?(ClientFix) ? DEPTH : 1
      end

      module ClientFix
        private

        def setup_body
          ready = super
          split_surplus if ready && !@chunked_body && @tempfile.nil? && @body.is_a?(StringIO)
          ready
        end

        def split_surplus
          length = @env[::Puma::Const::CONTENT_LENGTH]
          return unless length

          data = @body.string
          length = length.to_i
          return unless data.bytesize > length

          @buffer = data.byteslice(length, data.bytesize - length)
          @body = StringIO.new(data.byteslice(0, length))
        end
      end
    end
  end
end
