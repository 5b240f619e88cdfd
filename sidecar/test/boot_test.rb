# frozen_string_literal: true

require_relative "helper"

# Boot's removal of Sidekiq 7+'s Metrics::Middleware. 6.4.1 has no such class, so a stand-in of that
# name goes into the real (6.4.1) server chain; on 7.x/8.x `require "sidekiq/cli"` adds the real one.
class BootTest < Minitest::Test
  def test_sidekiq_metrics_middleware_is_taken_out_of_the_server_chain
    created = !defined?(::Sidekiq::Metrics::Middleware)
    ::Sidekiq.const_set(:Metrics, Module.new) unless ::Sidekiq.const_defined?(:Metrics, false)
    ::Sidekiq::Metrics.const_set(:Middleware, Class.new { def call(*) = yield }) if created
    Fastworker::Sidecar::Compat.server_middleware.add(::Sidekiq::Metrics::Middleware)
    assert Fastworker::Sidecar::Compat.server_middleware.exists?(::Sidekiq::Metrics::Middleware)
    Fastworker::Sidecar::Boot.drop_metrics_middleware!
    refute Fastworker::Sidecar::Compat.server_middleware.exists?(::Sidekiq::Metrics::Middleware)
  ensure
    ::Sidekiq.send(:remove_const, :Metrics) if created
  end
end
