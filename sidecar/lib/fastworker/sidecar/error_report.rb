# frozen_string_literal: true

module Fastworker
  module Sidecar
    # ErrorReport: the failure fields of a 422, computed as Sidekiq's JobRetry computes the
    # error fields it stores in the retry entry (job_retry.rb, "process_retry").
    #
    # Duties:
    # 1. error_class: the exception's fully qualified class name.
    # 2. error_message: the first 10,000 characters of the message, forced to UTF-8 and
    #    scrubbed; a fixed text when `message` itself raises.
    # 3. backtrace: only when the job's `backtrace` option is truthy (true → every line,
    #    an Integer n → the first n), after the backtrace cleaner (Sidekiq 7.1+ uses
    #    Rails.backtrace_cleaner), each line scrubbed so the JSON is always valid.
    class ErrorReport
      MAX_MESSAGE = 10_000
      MESSAGE_FAILED = "!!! ERROR MESSAGE THREW AN ERROR !!!"

      def initialize(exception, job, cleaner: ErrorReport.default_cleaner)
        @exception = exception
        @job = job
        @cleaner = cleaner
      end

      def error_class
        @exception.class.name || @exception.class.to_s
      end

      def error_message
        message = begin
          @exception.message.to_s[0, MAX_MESSAGE]
        rescue Exception # rubocop:disable Lint/RescueException -- Sidekiq rescues anything here too
          MESSAGE_FAILED
        end
        ErrorReport.utf8(message)
      end

      # nil when the job did not ask for a backtrace (the key is then left out of the 422).
      def backtrace
        option = @job["backtrace"]
        return nil unless option

        lines = clean(@exception.backtrace || [])
        lines = lines[0, option.to_i] unless option == true
        lines.map { |line| ErrorReport.utf8(line.to_s) }
      end

      def to_h
        h = {"error_class" => error_class, "error_message" => error_message}
        trace = backtrace
        h["backtrace"] = trace if trace
        h
      end

      def self.utf8(string)
        s = string.dup
        s.force_encoding(Encoding::UTF_8)
        s.scrub
      end

      # Sidekiq 7.1+ has config[:backtrace_cleaner]; on 6.x we use Rails' cleaner directly.
      def self.default_cleaner
        cfg = Compat.config
        return cfg[:backtrace_cleaner] if cfg && cfg[:backtrace_cleaner]
        return nil unless defined?(::Rails) && ::Rails.respond_to?(:backtrace_cleaner)

        ->(lines) { ::Rails.backtrace_cleaner.clean(lines) }
      end

      private

      def clean(lines)
        return lines unless @cleaner

        @cleaner.call(lines) || lines
      rescue => e
        Compat.logger.warn("backtrace cleaner failed: #{e.class}: #{e.message}")
        lines
      end
    end
  end
end
