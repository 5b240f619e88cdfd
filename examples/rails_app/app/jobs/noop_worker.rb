# frozen_string_literal: true

# Does nothing: the benchmark job.
class NoopWorker
  include Sidekiq::Worker

  def perform(*)
  end
end
