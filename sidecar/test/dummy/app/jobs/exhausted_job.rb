# frozen_string_literal: true

class ExhaustedJob
  include Sidekiq::Worker
  sidekiq_options retry: 0

  # An exception of the app's own, with an attribute and a cause: what error trackers read.
  class Suspended < StandardError
    attr_reader :tenant

    def initialize(tenant)
      @tenant = tenant
      super("tenant #{tenant} is suspended")
    end
  end

  sidekiq_retries_exhausted do |job, ex|
    Recorder.add(:exhausted, {"job" => job, "error_class" => ex.class.name, "message" => ex.message})
    raise "exhausted block exploded" if job["args"].first == "raise"

    (job["args"].first == "discard") ? :discard : nil
  end

  def perform(mode = nil)
    raise "always" unless mode == "suspended"

    begin
      raise IOError, "billing said no"
    rescue IOError
      raise Suspended, "acme"
    end
  end
end
