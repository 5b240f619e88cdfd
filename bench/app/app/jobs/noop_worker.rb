# frozen_string_literal: true

class NoopWorker
  include Sidekiq::Worker

  def perform(*)
  end
end
