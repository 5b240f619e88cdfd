# frozen_string_literal: true

module Fastworker
  module Sidecar
    # RetryAdvice: the Ruby-only retry decisions of a failed job, computed while the
    # exception is alive, for the worker to apply (the worker owns the retry set).
    #
    # Duties:
    # 1. retry: the job's `retry` option, or the class's sidekiq_options `retry` when the
    #    payload lacks it (as JobRetry#local fills it in).
    # 2. retry_in: the `sidekiq_retry_in` block's answer for count = retry_count + 1 (0 on
    #    the first failure), called with (count, exception) plus the job hash when the block
    #    takes three arguments. The block comes from the `wrapped` class when that class
    #    defines one, else from the job class (Sidekiq 7.1.3+). `to_i` of the answer (so
    #    "600" is 600 s) when > 0; :discard / :kill → "discard" / "kill"; anything else,
    #    or a block that raises (the error handlers are told), → nil: the default formula.
    #    Not called at all on the failure that exhausts the retries, as in Sidekiq.
    # 3. Nothing at all when the error happened before the job instance existed (unknown
    #    class, reloader error): Sidekiq's JobRetry#global has no class hooks either.
    class RetryAdvice
      DEFAULT_MAX_RETRIES = 25 # Sidekiq's JobRetry::DEFAULT_MAX_RETRY_ATTEMPTS

      def initialize(job, job_class)
        @job = job
        @job_class = job_class
      end

      def retry_option
        return @job["retry"] unless @job["retry"].nil? # as JobRetry#local: a nil retry takes the class option
        return nil unless @job_class.respond_to?(:get_sidekiq_options)

        @job_class.get_sidekiq_options["retry"]
      end

      def count
        @job["retry_count"] ? @job["retry_count"].to_i + 1 : 0
      end

      # Sidekiq's JobRetry calls delay_for only while retries remain: not on the failure that
      # exhausts them (count >= the limit, or 8.x's retry_for window over), so the block is not
      # called then either.
      def retry_in(exception)
        return nil if final_failure?

        block = Compat.hook_block(@job, @job_class, :sidekiq_retry_in_block)
        return nil unless block

        interpret(call_block(block, exception))
      rescue Exception => e # rubocop:disable Lint/RescueException -- as Sidekiq's retry_in
        raise if Compat.shutdown?(e)

        owner = Compat.wrapped_class(@job) || @job_class
        Compat.handle_exception(e, {context: "Failure scheduling retry using the defined `sidekiq_retry_in` in #{owner}, falling back to default"})
        nil
      end

      def to_h(exception)
        {"retry_in" => retry_in(exception), "retry" => retry_option}
      end

      # JobRetry#retry_attempts_from: an Integer `retry` is the limit, anything else the
      # process's max_retries (25 by default).
      def max_attempts
        option = retry_option
        return option if option.is_a?(Integer)

        Integer(Compat.option(:max_retries) || DEFAULT_MAX_RETRIES)
      end

      def final_failure?
        window = @job["retry_for"]
        if window.is_a?(Numeric)
          failed_at = @job["failed_at"]
          failed_at = failed_at / 1000.0 if failed_at.is_a?(Integer) # 8.x milliseconds
          started = failed_at.is_a?(Numeric) ? failed_at : Time.now.to_f
          return true if started + window < Time.now.to_f
        end
        count >= max_attempts
      end

      private

      def call_block(block, exception)
        if takes_job_hash?(block)
          block.call(count, exception, @job)
        else
          block.call(count, exception)
        end
      end

      # Procs ignore extra arguments, lambdas don't: pass the job hash when it fits.
      def takes_job_hash?(block)
        arity = block.arity
        return true unless block.lambda?

        arity >= 3 || (arity.negative? && -arity - 1 <= 3)
      end

      # As delay_for: `to_i` of whatever answers it (Integer, Float, Duration, "600"), a
      # positive result is the delay; :discard / :kill re-route the job; anything else (nil,
      # 0, "soon") keeps the default formula.
      def interpret(value)
        case value
        when :discard then "discard"
        when :kill then "kill"
        else
          value.respond_to?(:to_i) ? positive_seconds(value) : nil
        end
      end

      def positive_seconds(value)
        seconds = value.to_i
        seconds.positive? ? seconds : nil
      end
    end
  end
end
