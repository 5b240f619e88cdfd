# frozen_string_literal: true

require "set"

module Fastworker
  module Sidecar
    # JobClass: which constants the sidecar may instantiate. Sidekiq trusts whatever Redis
    # holds; the sidecar is a network door, so it runs jobs and nothing else.
    #
    # Duties:
    # 1. Accept a class that includes Sidekiq::Job / Sidekiq::Worker (every Sidekiq job, and
    #    the ActiveJob wrappers, which include it), or one the app allowed by name
    #    (FASTWORKER_SIDECAR_ALLOWED_CLASSES, comma-separated, or
    #    Fastworker::Sidecar.allow_classes in an initializer).
    # 2. For an ActiveJob wrapper, also the class it will instantiate, the payload's
    #    args[0]["job_class"]: it must be an ActiveJob::Base subclass.
    # 3. Refuse anything else with NotAJob, naming the class, before `new`: the Executor
    #    answers 400 and the worker sends the job to the dead set without spending a retry
    #    (it can never succeed).
    class JobClass
      class NotAJob < StandardError; end

      WRAPPERS = %w[ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper Sidekiq::ActiveJob::Wrapper].freeze
      ALLOWED_ENV = "FASTWORKER_SIDECAR_ALLOWED_CLASSES"

      def self.allowed
        @allowed ||= Set.new(ENV[ALLOWED_ENV].to_s.split(",").map(&:strip).reject(&:empty?))
      end

      def self.check!(klass, job)
        name = job["class"]
        refuse!(name, "it is not a Sidekiq job class (it includes neither Sidekiq::Job nor Sidekiq::Worker)") unless sidekiq_job?(klass) || allowed.include?(name)
        check_wrapped!(job) if klass.is_a?(Class) && WRAPPERS.include?(klass.name)
        klass
      end

      def self.sidekiq_job?(klass)
        return false unless klass.is_a?(Class)

        mixins.any? { |mod| klass.include?(mod) }
      end

      # Looked up on the first job, when Sidekiq has long been loaded: every job asks.
      def self.mixins
        @mixins ||= [(::Sidekiq::Job if defined?(::Sidekiq::Job)), (::Sidekiq::Worker if defined?(::Sidekiq::Worker))].compact.uniq.freeze
      end

      # The names of wrapped classes found to be ActiveJob classes: a name is looked up once,
      # not for every job (4.7 against 1.3 µs per job, bench/sidecar_batch.rb's NoopJob). Only
      # names that resolved to an ActiveJob class get in, so the set stays as small as the
      # app's job classes, and a refused name is looked up (and refused) every time.
      def self.activejob_names
        @activejob_names ||= Set.new
      end

      def self.check_wrapped!(job)
        data = job["args"].first
        job_class = data.is_a?(Hash) ? data["job_class"] : nil
        refuse!(job["class"], "its payload names no ActiveJob class (args[0][\"job_class\"])") unless job_class.is_a?(String) && !job_class.empty?
        return if allowed.include?(job_class) || activejob_names.include?(job_class)

        klass = Compat.constantize(job_class)
        if defined?(::ActiveJob::Base) && klass.is_a?(Class) && klass < ::ActiveJob::Base
          activejob_names.add(job_class)
          return
        end

        refuse!(job_class, "it is not an ActiveJob class (wrapped by #{job["class"]})")
      end

      def self.refuse!(name, why)
        message = "#{name} is never run: #{why}. If the app really enqueues it, allow it by name with #{ALLOWED_ENV}"
        Compat.logger.warn("fastworker-sidecar: #{message}")
        raise NotAJob, message
      end
    end
  end
end
