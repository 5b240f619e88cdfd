# frozen_string_literal: true

require_relative "../../lib/recorder"
require_relative "../../lib/recording_middleware"

Sidekiq.configure_server do |config|
  config.server_middleware do |chain|
    chain.add RecordingMiddleware
  end
  config.error_handlers << ->(ex, ctx) { Recorder.add(:errors, [ex, ctx]) }
  config.death_handlers << ->(job, ex) { Recorder.add(:deaths, [job, ex]) }
end
