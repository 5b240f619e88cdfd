# frozen_string_literal: true

module Fastworker
  module Sidecar
    # RemoteError: stands in for an exception that was raised in an earlier request.
    #
    # Duties:
    # 1. Rebuild, for /exhausted, an exception of the reported class with the reported
    #    message, so `sidekiq_retries_exhausted` and death handlers see what Sidekiq would
    #    have given them (same class, same message, the backtrace when the worker sends it).
    # 2. When that class is unknown or cannot be built, be a RuntimeError whose
    #    `remote_class` names the original class.
    class RemoteError < RuntimeError
      attr_reader :remote_class

      def initialize(message = nil, remote_class = nil)
        super(message)
        @remote_class = remote_class
      end

      # An exception object of class `class_name` carrying `message`.
      def self.build(class_name, message, backtrace = nil)
        message = message.to_s
        klass = exception_class(class_name)
        ex = klass ? instantiate(klass, message) : new(message, class_name)
        ex.set_backtrace(backtrace.map(&:to_s)) if backtrace.is_a?(Array)
        ex
      end

      def self.exception_class(class_name)
        return nil unless class_name.is_a?(String) && !class_name.empty?

        klass = Compat.constantize(class_name)
        (klass.is_a?(Class) && klass <= Exception) ? klass : nil
      rescue NameError
        nil
      end

      # Exception classes with their own constructor (e.g. a required record argument)
      # are allocated without it and answer the reported message.
      def self.instantiate(klass, message)
        ex = klass.new(message)
        return ex if ex.message == message

        with_message(klass.allocate, message)
      rescue ArgumentError, TypeError, NoMethodError
        with_message(klass.allocate, message)
      end

      def self.with_message(ex, message)
        ex.define_singleton_method(:message) { message }
        ex.define_singleton_method(:to_s) { message }
        ex
      end
    end
  end
end
